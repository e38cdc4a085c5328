"""
export.py

Export a trained model (a run directory of scripts/pretrain.py, or a local copy of a released model's folder in the
authors' `.pt` layout) to one self-contained directory, and optionally upload it to the Hugging Face hub:

    python scripts/export.py runs/my-lora-run exports/my-model                 # LoRA adapters kept as peft dirs
    python scripts/export.py runs/my-lora-run exports/my-model-merged --merge  # adapters folded into the LLM
    python scripts/export.py /data/DyVA-WorldLM/dyva_siglip+7b exports/dyva-7b --push_to_hub me/dyva-7b

`prismatic.load(OUT)` then reads OUT alone (offline, nothing else on disk); `--format` picks the layout: `native`
(default), `llava` (transformers' LlavaForConditionalGeneration, SigLIP-only models) or `hf-auto` (transformers' auto
classes; docs/hf_formats.md). `--push_to_hub REPO_ID` creates the model repo if needed and uploads OUT with
`huggingface_hub.upload_folder`, authenticated by the token `--hf_token` names (an environment variable or a file;
default HF_TOKEN, else huggingface_hub's own login). The weight-source flags point at local copies of what the
source does not hold (as for `prismatic.load`). A user error prints `error: <message>` and exits 2.
"""

import argparse
from dataclasses import fields
from pathlib import Path

from prismatic.export import EXPORT_FORMATS, ExportOptions, export_model, push_to_hub
from prismatic.training.run_setup import resolve_hf_token
from prismatic.util.cli import run_cli, user_errors
from prismatic.weight_sources import WeightSources

SOURCE_FLAGS = tuple(f.name for f in fields(WeightSources))  # the same sources as prismatic.load's keywords


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="run directory, or a released model's folder")
    parser.add_argument("out", type=Path, help="output directory (must not exist, or be empty)")
    parser.add_argument("--format", default="native", help=f"one of: {', '.join(sorted(EXPORT_FORMATS))}")
    parser.add_argument("--merge", action="store_true", help="fold LoRA adapters into the base weights")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload OUT to this hub model repo")
    parser.add_argument("--private", action="store_true", help="with --push_to_hub: create the repo private")
    parser.add_argument("--hf_token", default="HF_TOKEN", help="env variable or file holding the hub token")
    for name in SOURCE_FLAGS:
        parser.add_argument(f"--{name}", help="see prismatic.load (default: what the model's config says)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    with user_errors():
        token = resolve_hf_token(args.hf_token)
        sources = WeightSources(**{name: getattr(args, name) for name in SOURCE_FLAGS})
        out = export_model(args.source, args.out, args.format, ExportOptions(args.merge, token, sources))
    print(f"Exported {args.source} to {out}")
    if args.push_to_hub:
        url = push_to_hub(out, args.push_to_hub, token=token, private=args.private)
        print(f"Uploaded {out} to {url}")
    return out


if __name__ == "__main__":
    run_cli(main)
