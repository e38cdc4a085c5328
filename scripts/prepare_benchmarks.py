"""Build the harness's metadata files from the benchmark files you downloaded (once per benchmark; no network).

    python scripts/prepare_benchmarks.py --benchmarks vsr,tallyqa,pope --data_root ~/data/vlm-eval
    python scripts/prepare_benchmarks.py --benchmarks demo-world --data_root ~/data/vlm-eval   # generates the world

Each benchmark reads its raw files from `<data_root>/<benchmark folder>/download/` (or --raw_dir, for one benchmark),
checks the counts the protocol expects, selects vlm-evaluation's slim subset where the paper used one (seed 21), and
writes `<data_root>/<benchmark folder>/metadata-<variant>.json`. A missing file is an error that names it and where to
get it; docs/evaluation.md lists the files per benchmark.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmarks", required=True, help="comma-separated benchmark names, or all")
    parser.add_argument("--data_root", type=Path, required=True)
    parser.add_argument("--raw_dir", type=Path, default=None, help="the raw files' folder (one benchmark only)")
    parser.add_argument("--allow_other_counts", action="store_true",
                        help="prepare raw files whose counts differ from the protocol's (warn instead of failing)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from prismatic.eval.registry import get_benchmark, parse_benchmarks

    names = parse_benchmarks(args.benchmarks)
    if args.raw_dir is not None and len(names) != 1:
        raise SystemExit("error: --raw_dir names the raw folder of one benchmark; pass a single --benchmarks name.")
    for name in names:
        get_benchmark(name, strict_counts=not args.allow_other_counts).prepare(args.data_root, args.raw_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
