"""Score a model on the paper's benchmarks with the protocol its numbers were produced with (vlm-evaluation's prompts,
first-token probability scoring for closed-form tasks, official answer normalisation for open-form ones).

    python scripts/prepare_benchmarks.py --benchmarks vsr,tallyqa --data_root ~/data/vlm-eval     # once
    python scripts/evaluate.py --model runs/my-run --benchmarks vsr,tallyqa --data_root ~/data/vlm-eval
    torchrun --nproc-per-node 8 scripts/evaluate.py --model dyva_siglip+7b --benchmarks all --data_root ...
    python scripts/evaluate.py --rescore --model results/my-run-0123456789ab --benchmarks vsr   # no model needed

--model is a run directory, a released-layout directory or a released model id (`prismatic.load`). Results go to
`<results_dir>/<name>-<weights sha256[:12]>/<benchmark>/` (predictions.jsonl, results.json) and `results.md` beside
them, with the paper's numbers for released ids. A killed run resumes where it stopped when started again with the
same arguments; under torchrun the batches are spread over the processes (results equal to one process). SIGTERM /
SIGUSR1 (a scheduler's preemption notice) save the batch in progress and exit with `--preemption_exit_code`.
docs/evaluation.md has the protocol per benchmark and the Table 2 recipe.

A user error (an unknown benchmark, a missing model or metadata file) prints `error: <message>` and exits with status
2; `--debug` or `DYVA_DEBUG=1` shows its traceback (`prismatic/util/cli.py`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prismatic.eval.predict import KEYFRAME_POLICIES
from prismatic.util.cli import UserError, run_cli, user_errors

DTYPES = ("auto", "float32", "bfloat16")
LOAD_SOURCES = ("vision_pretrained_path", "svd_model_id", "svd_variant", "llm_pretrained_path")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="run directory, released-layout directory or released id; with --rescore, also a model "
                             "results folder (<results_dir>/<tag>)")  # fmt: skip
    parser.add_argument("--benchmarks", required=True, help="comma-separated benchmark names, or all")
    parser.add_argument("--data_root", type=Path, default=None, help="where prepare_benchmarks.py wrote the metadata")
    parser.add_argument("--results_dir", type=Path, default=Path("results"))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--keyframe_policy", choices=KEYFRAME_POLICIES, default="subsample",
                        help="items with more images than the generative encoder's slots: keep `subsample` (evenly "
                             "spread, first and last kept) or the `first` ones")  # fmt: skip
    parser.add_argument("--max_new_tokens", type=int, default=None, help="open-form answers (default: per benchmark)")
    parser.add_argument("--rescore", action="store_true", help="recompute metrics from saved predictions, no model")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: bfloat16 on GPU (the protocol), "
                                                                        "float32 on CPU")  # fmt: skip
    parser.add_argument("--hf_token", default=None, help="token for gated hub weights (or set HF_TOKEN)")
    parser.add_argument("--preemption_signals", default="SIGTERM,SIGUSR1",
                        help="comma-separated signals that stop the run after the batch in progress, saved "
                             "('' = the default signal actions)")  # fmt: skip
    parser.add_argument("--preemption_exit_code", type=int, default=0, help="exit status after such a stop")
    sources = parser.add_argument_group("local copies of what the checkpoint does not hold (prismatic.load)")
    for name in LOAD_SOURCES:
        sources.add_argument(f"--{name}", default=None)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    if not args.rescore and args.data_root is None:
        parser.error("--data_root is required (the folder scripts/prepare_benchmarks.py wrote)")
    return args


def model_folder_for_rescore(model: str, results_dir: Path) -> Path:
    """--model as a results folder, or the folder of a model reference under --results_dir."""
    from prismatic.eval.results import MODEL_FILE

    if (Path(model) / MODEL_FILE).is_file():
        return Path(model)
    return results_dir / fingerprint_model(model, None).tag


def fingerprint_model(model: str, hf_token: str | None) -> Any:
    from prismatic.eval.results import fingerprint_directory

    if Path(model).is_dir():
        return fingerprint_directory(Path(model), str(Path(model).resolve()))
    from prismatic.loader import RELEASE_CHECKPOINT, RELEASED_ALIASES, RELEASED_MODELS, RUN_CONFIG, _fetch

    model_id = RELEASED_ALIASES.get(model, model)
    if model_id not in RELEASED_MODELS:
        raise UserError(f"--model {model!r} is neither a directory nor a released id ({list(RELEASED_MODELS)}).")
    config = _fetch(model_id, RUN_CONFIG, hf_token, None)
    _fetch(model_id, RELEASE_CHECKPOINT, hf_token, None)
    fingerprint = fingerprint_directory(config.parent, model)
    return type(fingerprint)(model_id, model_id, model, fingerprint.weights, fingerprint.weights_sha256)


def load_model(model: str, hf_token: str | None, device: str, dtype: str, sources: dict[str, str]) -> Any:
    import torch

    from prismatic.loader import load

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    vlm = load(model, hf_token=hf_token, **sources)
    return vlm.to(device=device, dtype=getattr(torch, dtype)).eval()


def rescore_all(args: argparse.Namespace, benchmarks: list[Any], log: Callable[[str], None]) -> Path:
    """--rescore: recompute each benchmark's metrics from saved predictions; returns the model's results folder. A
    missing folder, predictions or metadata file is a user error; a scoring bug keeps its traceback."""
    from prismatic.eval.benchmark import BenchmarkDataError
    from prismatic.eval.harness import rescore

    with user_errors():
        folder = model_folder_for_rescore(args.model, args.results_dir)
    for benchmark in benchmarks:
        try:
            rescore(benchmark, folder, args.data_root, log)
        except BenchmarkDataError as error:
            raise UserError(str(error)) from error
    return folder


def main(argv: list[str] | None = None) -> int:
    """Evaluate (or, with --rescore, re-score) and return 0. The flags, the benchmarks' metadata and the model are
    resolved inside `user_errors()` (a UserError names the fix); the evaluation itself is not."""
    args = parse_args(argv)  # argparse reports its own usage errors (status 2)
    from prismatic.eval.registry import get_benchmark, parse_benchmarks
    from prismatic.eval.runner import RunOptions

    with user_errors():
        names = parse_benchmarks(args.benchmarks)
        benchmarks = [get_benchmark(name) for name in names]
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    if args.rescore:
        folder = rescore_all(args, benchmarks, log)
        print(f"Rescored {', '.join(names)}; tables in {folder / 'results.md'}")
        return 0

    from prismatic.util.preemption import Preemption

    options = RunOptions(args.batch_size, args.keyframe_policy, args.max_new_tokens)
    with user_errors():
        for benchmark in benchmarks:  # fail on a missing metadata file before loading a 7B model
            benchmark.load_records(args.data_root)
        signals = [name.strip() for name in args.preemption_signals.split(",") if name.strip()]
        preemption = Preemption(signals, args.preemption_exit_code)
    with preemption:
        return evaluate_all(args, benchmarks, options, preemption, log)


def evaluate_all(
    args: argparse.Namespace, benchmarks: list[Any], options: Any, preemption: Any, log: Callable[[str], None]
) -> int:
    """Load the model once and evaluate each benchmark (resuming what earlier runs saved)."""
    from prismatic.eval.harness import evaluate_benchmark
    from prismatic.util.distributed import init_distributed

    ctx = init_distributed()
    device = str(ctx.device) if args.device == "auto" and ctx.world_size > 1 else args.device
    with user_errors():
        fingerprint = fingerprint_model(args.model, args.hf_token)
        sources = {name: getattr(args, name) for name in LOAD_SOURCES if getattr(args, name) is not None}
        vlm = load_model(args.model, args.hf_token, device, args.dtype, sources)
    for benchmark in benchmarks:
        evaluate_benchmark(vlm, fingerprint, benchmark, args.data_root, args.results_dir, ctx, options, log, preemption)
    if ctx.is_rank_zero:
        print(f"Results in {args.results_dir / fingerprint.tag} (results.md: the tables)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
