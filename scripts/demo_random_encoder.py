"""
demo_random_encoder.py

The earlier demo (what `make demo` ran before the world-model study; docs/demo-random-encoder.md): a tiny DyVA whose SVD
is at random weights and a SigLIP-only baseline, trained on CPU through scripts/pretrain.py on the first demo world,
scored on held-out scenes and motion clips, and asked about assets/rocket.png and a held-out clip. About 12 minutes on 2
CPU cores; progress is printed throughout. Kept unchanged so its numbers stay reproducible.

    python scripts/demo.py --legacy                         # = python scripts/demo_random_encoder.py
    python scripts/demo.py --legacy --steps 400 --out runs/demo-quick --train_scenes 600 --train_clips 300

Stages:
1. data      the demo world (prismatic.demo), generated once into --data_dir (default: the demo cache directory);
2. features  the DyVA's frozen encoders over the train split, once (scripts/cache_features.py, one process per core),
             so no training step runs them (the baseline reads its SigLIP features from the same cache);
3. train     scripts/pretrain.py with configs/demo-dyva-tiny.yaml and configs/demo-siglip-tiny.yaml, side by side;
4. evaluate  scripts/evaluate.py --benchmarks demo-world (the evaluation harness: eval-single and eval-motion), for
             both runs (frozen encoders run live here);
5. report    one table (question type x model, with chance), the demo's targets, infer.py on two inputs. Everything
             lands in --out: the run directories (metrics.jsonl, loss.png, model.safetensors), eval/ (the harness's
             predictions, results.json and results.md per run),
             results.md and results.json. A rerun reuses the data, the feature cache and finished runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prismatic.demo import (
    DEMO_WORLD_SIZES,
    MOTION_TYPES,
    SINGLE_TYPES,
    build_demo_dataset,
    chance_level,
    default_cache_dir,
)
from prismatic.demo.jobs import Job, done, stage
from prismatic.demo.jobs import run_jobs as _run_jobs
from prismatic.eval.benchmarks.demo_world import DemoWorld, type_key
from prismatic.eval.results import fingerprint_directory

REPO = Path(__file__).resolve().parents[1]
MODELS = {"dyva": ("DyVA (SigLIP + SVD)", REPO / "configs/demo-dyva-tiny.yaml"),
          "siglip": ("SigLIP only", REPO / "configs/demo-siglip-tiny.yaml")}  # fmt: skip
TARGET_SINGLE, TARGET_MOTION_MARGIN = 0.90, 0.15
run_jobs = functools.partial(_run_jobs, cwd=REPO)


# === Report ===
def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def results_table(reports: dict[str, dict]) -> tuple[str, dict]:
    """Markdown table (question type x model, chance) and a summary with the targets checked, from each model's
    demo-world results.json (the harness's metrics are in percent; the summary keeps fractions)."""
    names = [MODELS[m][0] for m in reports]
    first = next(iter(reports.values()))
    lines = ["| question type | chance % | " + " | ".join(f"{n} %" for n in names) + " | n |",
             "| --- | ---: | " + " | ".join("---:" for _ in names) + " | ---: |"]  # fmt: skip
    summary: dict = {"models": {}}
    for group, types in (("single-image", SINGLE_TYPES), ("motion", MOTION_TYPES)):
        for question_type in types:
            cells = [reports[m]["metrics"][type_key(question_type)] for m in reports]
            lines.append(f"| {question_type} | {100 * chance_level(question_type):.1f} | "
                         + " | ".join(f"{c:.1f}" for c in cells) + f" | {first['counts'][question_type]} |")  # fmt: skip
        chance = mean([chance_level(t) for t in types])
        means = {m: mean([reports[m]["metrics"][type_key(t)] / 100 for t in types]) for m in reports}
        lines.append(f"| **mean {group}** | {100 * chance:.1f} | "
                     + " | ".join(f"**{100 * v:.1f}**" for v in means.values()) + " | |")  # fmt: skip
        for model, value in means.items():
            summary["models"].setdefault(model, {})[f"mean_{group}"] = value
        summary[f"chance_{group}"] = chance
    n_motion = sum(first["counts"][t] for t in MOTION_TYPES)
    summary["motion_noise_95"] = 1.96 * math.sqrt(summary["chance_motion"] * (1 - summary["chance_motion"]) / n_motion)
    return "\n".join(lines), summary


def target_lines(summary: dict) -> list[str]:
    dyva, base = summary["models"].get("dyva", {}), summary["models"].get("siglip", {})
    chance, noise = summary["chance_motion"], summary["motion_noise_95"]
    lines = []
    if dyva:
        single, motion = dyva["mean_single-image"], dyva["mean_motion"]
        lines.append(f"- DyVA, single-image mean {100 * single:.1f}% (target >= {100 * TARGET_SINGLE:.0f}%): "
                     f"{'met' if single >= TARGET_SINGLE else 'NOT met'}")  # fmt: skip
        lines.append(f"- DyVA, motion mean {100 * motion:.1f}% vs chance {100 * chance:.1f}% (target >= "
                     f"+{100 * TARGET_MOTION_MARGIN:.0f} points): "
                     f"{'met' if motion - chance >= TARGET_MOTION_MARGIN else 'NOT met'}")  # fmt: skip
    if base:
        gap = base["mean_motion"] - chance
        lines.append(
            f"- SigLIP-only, motion mean {100 * base['mean_motion']:.1f}% vs chance {100 * chance:.1f}% "
            f"(95% noise band +-{100 * noise:.1f} points): "
            f"{'within the noise of chance' if abs(gap) <= noise else 'OUTSIDE the noise of chance'}"
        )
    return lines


# === Stages ===
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo-legacy", help="run directories and reports")
    parser.add_argument("--data_dir", type=Path, default=None, help="demo data (default: the demo cache directory)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the configs')")
    parser.add_argument("--train_scenes", type=int, default=DEMO_WORLD_SIZES["num_train_scenes"])
    parser.add_argument("--train_clips", type=int, default=DEMO_WORLD_SIZES["num_train_clips"])
    parser.add_argument("--eval_scenes", type=int, default=DEMO_WORLD_SIZES["num_eval_scenes"])
    parser.add_argument("--eval_clips", type=int, default=DEMO_WORLD_SIZES["num_eval_clips"])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--processes", type=int, default=2, help="processes at a time (one core each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the demo world")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out, python = args.out.resolve(), sys.executable
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    start = stage("1/5 data: the demo world")
    data = build_demo_dataset(args.data_dir or default_cache_dir(), seed=args.seed, num_train_scenes=args.train_scenes,
                              num_train_clips=args.train_clips, num_eval_scenes=args.eval_scenes,
                              num_eval_clips=args.eval_clips)  # fmt: skip
    print(f"    {data.root}: train {args.train_scenes} scenes + {args.train_clips} clips; held out "
          f"{args.eval_scenes} scenes, {args.eval_clips} clips")  # fmt: skip
    done(start)

    common = ["--dataset.dataset_root_dir", str(data.root), "--feature_cache_dir", str(out / "features")]
    start = stage("2/5 features: the frozen encoders over the train split, once")
    cache = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.processes}",
             "scripts/cache_features.py", "--config_path", str(MODELS["dyva"][1]), *common]  # fmt: skip
    run_jobs([Job("features", cache)], parallel=1)
    done(start)

    start = stage(f"3/5 train: {' and '.join(MODELS[m][0] for m in args.models)}, side by side")
    steps = ["--model.finetune_max_steps", str(args.steps), "--save_interval", str(args.steps)] if args.steps else []
    run_jobs([Job(f"train {m}", [python, "scripts/pretrain.py", "--config_path", str(MODELS[m][1]), *common,
                                 "--run_root_dir", str(out), "--run_id", m, "--resume", "auto", *steps])
              for m in args.models], parallel=args.processes)  # fmt: skip
    done(start)

    start = stage("4/5 evaluate on the held-out splits (the evaluation harness, benchmark demo-world)")
    DemoWorld().prepare(out / "eval-data", raw_dir=data.root)
    jobs = [Job(f"eval {m}", [python, "scripts/evaluate.py", "--model", str(out / m), "--benchmarks", DemoWorld.name,
                              "--data_root", str(out / "eval-data"), "--results_dir", str(out / "eval"),
                              "--batch_size", "32", "--device", "cpu"])
            for m in args.models]  # fmt: skip
    run_jobs(jobs, parallel=args.processes)
    done(start)
    start = stage("5/5 report")
    reports = {m: json.loads((out / "eval" / fingerprint_directory(out / m, str(out / m)).tag / DemoWorld.name /
                              "results.json").read_text()) for m in args.models}  # fmt: skip
    table, summary = results_table(reports)
    targets = target_lines(summary)
    summary.update(steps=args.steps, minutes=(time.perf_counter() - began) / 60, data=str(data.root))
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "results.md").write_text(f"{table}\n\n" + "\n".join(targets) + "\n")
    print(table + "\n\n" + "\n".join(targets), flush=True)
    if "dyva" in args.models:
        clip = next(r for r in json.loads(data.eval_motion_json.read_text()) if len(r["image"]) == 4)
        question = clip["conversations"][0]["value"].replace("<image>", "").strip()
        infer = [python, "infer.py", "--model", str(out / "dyva"), "--dtype", "float32", "--max_new_tokens", "8"]
        run_jobs([Job("infer rocket", [*infer, "--image", "assets/rocket.png", "--prompt",
                                       "How many shapes are there? Answer with one word."]),
                  Job(f"infer {clip['id']} (truth: {clip['conversations'][1]['value']})",
                      [*infer, "--image", *[str(data.root / p) for p in clip["image"]], "--prompt", question])],
                 parallel=args.processes)  # fmt: skip
    done(start)
    print(f"\nDemo finished in {(time.perf_counter() - began) / 60:.1f} min; runs, loss curves and reports in {out}")
    return summary


if __name__ == "__main__":
    main()
