"""
demo.py

The main job (`make demo`): a small replication of the paper's thesis on CPU. Does a world model, a video generator
pretrained on unlabelled clips of a world, give a VLM features that answer questions about that world's future from a
single image, and by how much per labelled example? docs/demo.md has the world, the protocol and the numbers.

    python scripts/demo.py                         # what `make demo` runs: one labelled-set size, one seed (~20 min)
    python scripts/demo.py --study                 # seeds x labelled-set sizes, table + plot (about an hour)
    python scripts/demo.py --legacy [FLAGS]        # the earlier demo (random SVD; scripts/demo_random_encoder.py)

Stages (everything through the framework's own scripts, as separate processes, one CPU core each):
1. data          the falling world (prismatic.demo.world_data): unlabelled clips, a labelled question pool, validation
                 and held-out questions; a training set of --per_type questions per type drawn from the pool;
2. world model   scripts/train_world_model.py with configs/demo-world-model.yaml on the unlabelled clips;
3. features      scripts/cache_features.py: both DyVAs' frozen encoders over the pool, once;
4. train         scripts/pretrain.py, three VLMs on the same labelled set: DyVA with the pretrained world model as its
                 SVD, DyVA with the same SVD at random weights, SigLIP only;
5. evaluate      scripts/evaluate.py --benchmarks demo-world (held-out static, future and multi-frame questions);
6. report        a table by question type, the world model's sample clips; results.md / results.json in --out.
A rerun reuses finished stages. `--study` runs stages 1-3 once, picks each model's learning rate on the validation
split (`--lr_grid`, smallest size, first seed), then trains every (size, seed, model) and writes study.md/.json/.png.
A bad flag value or an unusable --data_dir prints `error: <message>` and exits with status 2 (`--debug` or
`DYVA_DEBUG=1`: with its traceback); a failed stage prints the child command's last lines and exits 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import runpy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from prismatic.demo.jobs import Job, done, stage
from prismatic.demo.jobs import run_jobs as _run_jobs
from prismatic.demo.report import GROUPS, group_scores, per_type_table, plot_study, study_table, summarize
from prismatic.demo.world_data import WORLD_DATA_SIZES, WorldDataPaths, build_world_dataset, write_labelled_subset
from prismatic.eval.benchmarks.demo_world import DemoWorld, DemoWorldVal
from prismatic.eval.results import fingerprint_directory
from prismatic.util.cli import run_cli, user_errors

REPO = Path(__file__).resolve().parents[1]
WORLD_MODEL_CONFIG = REPO / "configs/demo-world-model.yaml"
run_jobs = functools.partial(_run_jobs, cwd=REPO)


@dataclass(frozen=True)
class Model:
    title: str
    config: Path
    world_model: bool  # the SVD stream is the pretrained world model (else the tiny SVD at random weights)


MODELS = {
    "dyva-wm": Model("DyVA + world model", REPO / "configs/demo-study-dyva.yaml", True),
    "dyva-random": Model("DyVA, random SVD", REPO / "configs/demo-study-dyva.yaml", False),
    "siglip": Model("SigLIP only", REPO / "configs/demo-study-siglip.yaml", False),
}
TITLES = {name: model.title for name, model in MODELS.items()}
# Targets of the study (issue 12), checked on averages over seeds at the smallest labelled-set size.
TARGET_FUTURE_MARGIN, TARGET_STATIC_SPREAD = 10.0, 5.0


@dataclass(frozen=True)
class Cell:
    """One VLM run: which model, how many labelled examples per question type, which seed, which learning rate."""

    model: str
    per_type: int
    seed: int
    lr: float

    @property
    def run_id(self) -> str:
        return f"{self.model}-n{self.per_type}-s{self.seed}-lr{self.lr:g}"


def config_lr(model: str) -> float:
    return float(yaml.safe_load(MODELS[model].config.read_text())["model"]["finetune_learning_rate"])


# === Stages ===
def build_data(args: argparse.Namespace) -> WorldDataPaths:
    start = stage("1 data: the falling world")
    sizes = {key: getattr(args, key) for key in WORLD_DATA_SIZES}
    with user_errors():  # e.g. a --data_dir that holds something else
        data = build_world_dataset(args.data_dir, seed=args.world_seed, **sizes)
    done(start)
    return data


def train_world_model(args: argparse.Namespace, data: WorldDataPaths) -> Path:
    """The world model's diffusers directory (trained unless a finished run is there)."""
    run_dir = args.out / "world-model"
    start = stage("2 world model: a tiny SVD pretrained on the unlabelled clips (no labels)")
    if not (run_dir / "samples" / "samples.png").is_file():  # samples are written last
        steps = ["--max_steps", str(args.world_model_steps), "--save_interval", str(args.world_model_steps),
                 "--val_every", str(args.world_model_steps)] if args.world_model_steps else []  # fmt: skip
        if args.autoencoder_steps is not None:
            steps += ["--autoencoder_steps", str(args.autoencoder_steps)]
        argv = [sys.executable, "scripts/train_world_model.py", "--config_path", str(WORLD_MODEL_CONFIG),
                "--manifest", str(data.world_manifest), "--run_root_dir", str(args.out), "--run_id", "world-model",
                "--resume", "auto", *steps]  # fmt: skip
        run_jobs([Job("world model", argv, threads=args.processes)], parallel=1)
    print(f"    world model: {run_dir / 'world_model'}; sample clips: {run_dir / 'samples'}")
    done(start)
    return run_dir / "world_model"


def common_flags(args: argparse.Namespace, data: WorldDataPaths, model: str, world_model: Path) -> list[str]:
    flags = ["--config_path", str(MODELS[model].config), "--dataset.dataset_root_dir", str(data.root),
             "--feature_cache_dir", str(args.out / "features")]  # fmt: skip
    return flags + (["--model.svd_model_id", str(world_model)] if MODELS[model].world_model else [])


def cache_features(args: argparse.Namespace, data: WorldDataPaths, world_model: Path, labelled: Path) -> None:
    """Both DyVAs' frozen features of `labelled` (a JSON under the data root: a training set, or the whole pool)."""
    start = stage(f"3 features: both DyVAs' frozen encoders over {labelled.name}, once")
    jobs = [Job(f"features {model}", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                      f"--nproc-per-node={args.processes}", "scripts/cache_features.py",
                                      *common_flags(args, data, model, world_model),
                                      "--dataset.finetune_stage_components",
                                      f"[{labelled.relative_to(data.root)}, .]"])
            for model in ("dyva-wm", "dyva-random") if model in args.models]  # fmt: skip
    run_jobs(jobs, parallel=1)
    done(start)


def train(args: argparse.Namespace, data: WorldDataPaths, world_model: Path, cells: list[Cell]) -> None:
    steps = ["--model.finetune_max_steps", str(args.steps), "--save_interval", str(args.steps)] if args.steps else []
    jobs = []
    for cell in cells:
        if (args.out / "vlm" / cell.run_id / "model.safetensors").is_file():  # exported at the last step only
            continue
        labelled = write_labelled_subset(data, cell.per_type, cell.seed).relative_to(data.root)
        jobs.append(Job(f"train {cell.run_id}", [
            sys.executable, "scripts/pretrain.py", *common_flags(args, data, cell.model, world_model),
            "--dataset.finetune_stage_components", f"[{labelled}, .]", "--seed", str(cell.seed),
            "--model.finetune_learning_rate", str(cell.lr), "--run_root_dir", str(args.out / "vlm"),
            "--run_id", cell.run_id, "--resume", "auto", *steps]))  # fmt: skip
    run_jobs(jobs, parallel=args.processes)


def evaluate(args: argparse.Namespace, data: WorldDataPaths, cells: list[Cell], validation: bool) -> dict[Cell, dict]:
    """Score every cell's run on the held-out (or validation) questions; the results.json of each."""
    benchmark = DemoWorldVal() if validation else DemoWorld()
    benchmark.prepare(args.out / "eval-data", raw_dir=data.root)
    results_dir = args.out / ("eval-val" if validation else "eval")

    def results_file(cell: Cell) -> Path:
        run = args.out / "vlm" / cell.run_id
        return results_dir / fingerprint_directory(run, str(run)).tag / benchmark.name / "results.json"

    jobs = [Job(f"eval {cell.run_id}", [sys.executable, "scripts/evaluate.py", "--model", str(args.out / "vlm" /
                cell.run_id), "--benchmarks", benchmark.name, "--data_root", str(args.out / "eval-data"),
                "--results_dir", str(results_dir), "--batch_size", "32", "--device", "cpu"])
            for cell in cells if not results_file(cell).is_file()]  # fmt: skip
    run_jobs(jobs, parallel=args.processes)
    return {cell: json.loads(results_file(cell).read_text()) for cell in cells}


# === The two jobs ===
def main_job(args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    data = build_data(args)
    world_model = train_world_model(args, data) if "dyva-wm" in args.models else Path()
    cache_features(args, data, world_model, write_labelled_subset(data, args.per_type, args.seed))
    cells = [Cell(m, args.per_type, args.seed, config_lr(m)) for m in args.models]
    start = stage(f"4 train: {', '.join(TITLES[m] for m in args.models)} on {args.per_type} labelled questions per "
                  f"type (seed {args.seed})")  # fmt: skip
    train(args, data, world_model, cells)
    done(start)
    start = stage("5 evaluate on the held-out questions (the evaluation harness, benchmark demo-world)")
    results = evaluate(args, data, cells, validation=False)
    done(start)
    start = stage("6 report")
    scores = {c.model: group_scores(r["metrics"]) for c, r in results.items()}
    counts = next(iter(results.values()))["counts"]
    table = per_type_table(scores, TITLES, counts)
    samples = args.out / "world-model" / "samples"
    lines = [table, "", f"World model sample clips (generated from held-out first frames): {samples}"]
    summary = {"per_type": args.per_type, "seed": args.seed, "models": scores, "runs": [c.run_id for c in cells],
               "minutes": (time.perf_counter() - began) / 60}  # fmt: skip
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    sample_link = "![world model samples](world-model/samples/samples.png)" if samples.is_dir() else ""
    (args.out / "results.md").write_text("\n".join([table, "", sample_link]) + "\n")
    print("\n".join(lines), flush=True)
    done(start)
    print(f"\nDemo finished in {summary['minutes']:.1f} min; runs, loss curves and reports in {args.out}")
    return summary


def select_learning_rates(args: argparse.Namespace, data: WorldDataPaths, world_model: Path) -> dict[str, float]:
    """Each model's learning rate: the best mean validation accuracy over the grid, at the smallest size, first seed."""
    cells = [Cell(m, min(args.sizes), args.seeds[0], lr) for m in args.models for lr in args.lr_grid]
    start = stage(f"study: learning rates {args.lr_grid} on the validation split ({len(cells)} runs)")
    train(args, data, world_model, cells)
    results = evaluate(args, data, cells, validation=True)
    chosen, lines = {}, ["| model | " + " | ".join(f"lr {lr:g}" for lr in args.lr_grid) + " | chosen |",
                         "| --- | " + " | ".join("---:" for _ in args.lr_grid) + " | ---: |"]  # fmt: skip
    for model in args.models:
        means = {}
        for cell in (c for c in cells if c.model == model):
            scores = group_scores(results[cell]["metrics"])
            means[cell.lr] = sum(scores[g] for g in GROUPS) / len(GROUPS)
        chosen[model] = max(means, key=lambda lr: means[lr])
        lines.append(f"| {TITLES[model]} | " + " | ".join(f"{means[lr]:.1f}" for lr in args.lr_grid)
                     + f" | {chosen[model]:g} |")  # fmt: skip
    (args.out / "study-selection.md").write_text("Validation accuracy (mean of the group means, %)\n\n"
                                                 + "\n".join(lines) + "\n")  # fmt: skip
    print("\n".join(lines), flush=True)
    done(start)
    return chosen


def study(args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    data = build_data(args)
    world_model = train_world_model(args, data) if "dyva-wm" in args.models else Path()
    cache_features(args, data, world_model, data.pool)
    lrs = select_learning_rates(args, data, world_model)
    cells = [Cell(m, n, s, lrs[m]) for n in args.sizes for s in args.seeds for m in args.models]
    start = stage(f"study: {len(cells)} runs ({len(args.sizes)} sizes x {len(args.seeds)} seeds x "
                  f"{len(args.models)} models), scored on the held-out questions")  # fmt: skip
    train(args, data, world_model, cells)
    results = evaluate(args, data, cells, validation=False)
    done(start)
    grouped: dict[tuple[str, int], list[dict[str, float]]] = {}
    for cell, result in results.items():
        grouped.setdefault((cell.model, cell.per_type), []).append(group_scores(result["metrics"]))
    tables = [study_table(grouped, TITLES, group) for group in GROUPS]
    targets = study_targets(grouped, min(args.sizes))
    plot_study(grouped, TITLES, args.out / "study.png")
    text = "\n\n".join(tables) + "\n\n" + "\n".join(targets) + "\n\n![study](study.png)\n"
    (args.out / "study.md").write_text(f"Learning rates (chosen on validation): {lrs}\n\n" + text)
    raw = {f"{m}|{n}": rows for (m, n), rows in grouped.items()}
    (args.out / "study.json").write_text(json.dumps({"learning_rates": lrs, "sizes": args.sizes, "seeds": args.seeds,
                                                     "scores": raw}, indent=2) + "\n")  # fmt: skip
    print(text, flush=True)
    print(f"\nStudy finished in {(time.perf_counter() - began) / 60:.1f} min; {args.out / 'study.md'}")
    return {"learning_rates": lrs, "scores": grouped}


def study_targets(grouped: dict[tuple[str, int], list[dict[str, float]]], size: int) -> list[str]:
    """The issue's targets at the smallest size, from the seed averages and their 95% intervals."""
    if not all((m, size) in grouped for m in MODELS):
        return ["(targets need all three models)"]
    future = {m: summarize([s["future"] for s in grouped[(m, size)]]) for m in MODELS}
    static = {m: summarize([s["static"] for s in grouped[(m, size)]]).mean for m in MODELS}
    lines = []
    for other in ("dyva-random", "siglip"):
        margin = future["dyva-wm"].mean - future[other].mean
        apart = future["dyva-wm"].low > future[other].high
        met = margin >= TARGET_FUTURE_MARGIN and apart
        ours = future["dyva-wm"].mean
        lines.append(f"- future questions, {size} examples per type: {TITLES['dyva-wm']} {ours:.1f} vs "
                     f"{TITLES[other]} {future[other].mean:.1f} ({margin:+.1f} points, 95% intervals "
                     f"{'apart' if apart else 'overlap'}; target >= +{TARGET_FUTURE_MARGIN:.0f} and apart): "
                     f"{'met' if met else 'NOT met'}")  # fmt: skip
    spread = max(static.values()) - min(static.values())
    lines.append(f"- static questions, {size} examples per type: spread {spread:.1f} points across the three models "
                 f"(target <= {TARGET_STATIC_SPREAD:.0f}): {'met' if spread <= TARGET_STATIC_SPREAD else 'NOT met'}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo", help="run directories and reports")
    parser.add_argument("--data_dir", type=Path, default=None, help="demo data (default: <out>/data)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--per_type", type=int, default=50, help="labelled examples per question type (main job)")
    parser.add_argument("--seed", type=int, default=0, help="labelled-set draw and training seed (main job)")
    parser.add_argument("--steps", type=int, default=None, help="VLM training steps (default: the configs')")
    parser.add_argument("--world_model_steps", type=int, default=None, help="default: configs/demo-world-model.yaml's")
    parser.add_argument("--autoencoder_steps", type=int, default=None, help="default: the world model config's")
    parser.add_argument("--world_seed", type=int, default=0, help="seed of the generated world")
    for key, value in WORLD_DATA_SIZES.items():
        parser.add_argument(f"--{key}", type=int, default=value, help="size of the generated world")
    parser.add_argument("--processes", type=int, default=2, help="processes at a time (one core each)")
    parser.add_argument("--study", action="store_true", help="seeds x labelled-set sizes instead of the main job")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200], help="study: examples per type")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="study: seeds")
    parser.add_argument("--lr_grid", type=float, nargs="+", default=[5e-4, 1e-3], help="study: learning rates")
    args = parser.parse_args(argv)
    for name in ("steps", "world_model_steps", "autoencoder_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    for name in WORLD_DATA_SIZES:
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.processes < 1:
        parser.error("--processes must be >= 1")
    if min(args.lr_grid) <= 0:
        parser.error("--lr_grid: learning rates must be > 0")
    if args.per_type < 1 or min(args.sizes) < 1:
        parser.error("--per_type and --sizes must be >= 1")
    if max(args.sizes if args.study else [args.per_type]) > args.pool_per_type:
        parser.error(f"--per_type / --sizes draw from a pool of --pool_per_type {args.pool_per_type} per type; "
                     "raise --pool_per_type or lower them")
    args.out = args.out.resolve()
    args.data_dir = (args.data_dir or args.out / "data").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> dict:
    """The main job, the study (--study) or the earlier demo (--legacy); returns the summary."""
    argv = sys.argv[1:] if argv is None else argv
    if "--legacy" in argv:
        sys.argv = [str(REPO / "scripts/demo_random_encoder.py"), *(a for a in argv if a != "--legacy")]
        return runpy.run_path(sys.argv[0], run_name="__main__").get("summary", {})
    args = parse_args(argv)
    return study(args) if args.study else main_job(args)


if __name__ == "__main__":
    run_cli(main)
