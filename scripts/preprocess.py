"""Lay out the LLaVA-1.5 training data in the tree a dataset config expects, then validate it with the preflight.

Sources are local downloads (symlinked, or copied with --mode copy); with --download and a network, missing parts are
fetched from their public URLs (urllib only). Run with --help for the expected trees; exits 1 when the preflight finds
bad samples, so it can gate a training job. A user error (a missing source, a bad flag value) prints `error: <message>`
and exits 2; `--debug` or `DYVA_DEBUG=1` shows its traceback (`prismatic/util/cli.py`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from prismatic.conf.datasets import LLAVA_ALIGN_JSON, LLAVA_FINETUNE_JSON, get_dataset_config
from prismatic.models.stages import Stage
from prismatic.preprocessing.preflight import PreflightOptions, run_preflight
from prismatic.preprocessing.records import DatasetError, image_relpaths, load_records
from prismatic.preprocessing.samples import IMAGE_CHECKS, SampleTokenizer
from prismatic.util.cli import UserError, run_cli, user_errors

EXPECTED_TREES = """
expected trees (under --root, default data/):

  llava-svd / llava_svd (the released layout)        llava-v15 (prismatic-vlms' names)
    LLaVA-Pretrain/                                    download/llava-laion-cc-sbu-558k/
      blip_laion_cc_sbu_558k.json                        chat.json  (= blip_laion_cc_sbu_558k.json)
      images/00000/000000010.jpg ...                     00000/000000010.jpg ...
    LLaVA-FT/                                          download/llava-v1.5-instruct/
      llava_v1_5_mix665k.json                            llava_v1_5_mix665k.json
      coco/train2017/                                    coco/train2017/   (same folders)
      gqa/images/                                        gqa/images/
      ocr_vqa/images/                                    ocr_vqa/images/
      textvqa/train_images/                              textvqa/train_images/
      vg/VG_100K/  vg/VG_100K_2/                         vg/VG_100K/  vg/VG_100K_2/

Each source option takes the downloaded folder, either the folder itself (e.g. .../train2017) or its parent.
Image paths inside the JSON files are relative to the image folder (LLaVA-Pretrain/images, LLaVA-FT).

examples:
  python scripts/preprocess.py --dataset llava-svd --finetune-json ~/dl/llava_v1_5_mix665k.json \\
      --coco ~/dl/coco --gqa ~/dl/gqa --ocr-vqa ~/dl/ocr_vqa --textvqa ~/dl/textvqa --vg ~/dl/vg
  python scripts/preprocess.py --dataset llava-svd --stage align --align-json ~/dl/blip_laion_cc_sbu_558k.json \\
      --align-images ~/dl/LLaVA-Pretrain/images
  python scripts/preprocess.py --dataset llava-svd --check-only --llm-backbone-id llama2-7b-pure \\
      --llm-max-length 2048 --num-visual-tokens 648       # also flags over-long samples
"""

HF = "https://huggingface.co/datasets/liuhaotian"


@dataclass(frozen=True)
class Part:
    """One piece of the tree: where it goes (relative to the stage's image dir), the CLI option giving its local
    source, and (if public) a zip URL whose contents extract into the target's parent."""

    target: str
    option: str
    url: str | None = None


FINETUNE_PARTS = (
    Part("coco/train2017", "coco", "http://images.cocodataset.org/zips/train2017.zip"),
    Part("gqa/images", "gqa", "https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip"),
    Part("ocr_vqa/images", "ocr_vqa"),  # distributed through a Google Drive script: no direct URL
    Part("textvqa/train_images", "textvqa", "https://dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip"),
    Part("vg/VG_100K", "vg", "https://cs.stanford.edu/people/rak248/VG_100K_2/images.zip"),
    Part("vg/VG_100K_2", "vg", "https://cs.stanford.edu/people/rak248/VG_100K_2/images2.zip"),
)
JSON_URLS = {
    "finetune": f"{HF}/LLaVA-Instruct-150K/resolve/main/{LLAVA_FINETUNE_JSON}",
    "align": f"{HF}/LLaVA-Pretrain/resolve/main/{LLAVA_ALIGN_JSON}",
}
ALIGN_IMAGES_URL = f"{HF}/LLaVA-Pretrain/resolve/main/images.zip"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


def say(message: str) -> None:
    print(message, flush=True)


# === Placing local sources ===
def resolve_source(source: Path, target: str) -> Path:
    """Accept the folder itself (…/train2017) or a parent holding it (…/coco, …/coco/train2017)."""
    leaf = Path(target).name
    for candidate in (source / leaf, source / target, source):
        if candidate.is_dir() and (candidate.name == leaf or candidate == source / leaf):
            return candidate
    raise UserError(f"{source} holds no '{leaf}' folder (expected {source}/{leaf} or a folder named {leaf}).")


def place(source: Path, target: Path, mode: str) -> None:
    """Symlink or copy `source` to `target`; an existing target is kept (and reported) unless it is a broken link."""
    if not source.exists():  # a link to nothing would only surface later as a missing file in the preflight
        raise UserError(f"{source} does not exist; pass the downloaded file or folder.")
    if target.is_symlink() and not target.exists():
        target.unlink()
    if target.exists():
        same = target.resolve() == source.resolve()
        say(f"  {target}: {'already linked' if same else 'exists, kept (remove it to replace it)'}")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        target.symlink_to(source.resolve(), target_is_directory=source.is_dir())
        say(f"  {target} -> {source.resolve()}")
    elif source.is_dir():
        copied = 0

        def progress(src: str, dst: str) -> object:
            nonlocal copied
            copied += 1
            if copied % 10_000 == 0:
                say(f"    copied {copied} files into {target} ...")
            return shutil.copy2(src, dst)

        shutil.copytree(source, target, copy_function=progress)
        say(f"  {target}: copied {copied} files")
    else:
        shutil.copy2(source, target)
        say(f"  {target}: copied")


# === Downloading (only with --download) ===
def download(url: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        say(f"  {dest}: already downloaded")
        return dest
    partial = dest.with_name(dest.name + ".partial")
    say(f"  downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            total, done, last = int(response.headers.get("Content-Length") or 0), 0, time.monotonic()
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if time.monotonic() - last > 10:
                    last = time.monotonic()
                    share = f" of {total / 2**20:.0f}" if total else ""
                    say(f"    {done / 2**20:.0f}{share} MiB")
    except (urllib.error.URLError, OSError) as error:
        raise UserError(f"could not download {url} ({error}); download it by hand and pass its path.") from None
    partial.replace(dest)  # only complete files get the final name
    return dest


def fetch_zip(url: str, extract_to: Path, archive: Path) -> None:
    """Download a zip (kept under `archive` for reruns) and extract it into `extract_to`."""
    archive = download(url, archive)
    say(f"  extracting {archive.name} into {extract_to}")
    with zipfile.ZipFile(archive) as handle:
        handle.extractall(extract_to)


# === Layout ===
def lay_out_stage(args: argparse.Namespace, stage: Stage, json_file: Path, image_dir: Path) -> None:
    say(f"[{stage}] laying out {json_file.parent}")
    cache = Path(args.root) / "_downloads"
    json_source = args.finetune_json if stage is Stage.FINETUNE else args.align_json
    if json_source is not None:
        place(Path(json_source), json_file, args.mode)
    elif not json_file.exists() and args.download:
        place(download(JSON_URLS[stage], cache / Path(JSON_URLS[stage]).name), json_file, "copy")
    if stage is Stage.ALIGN:
        if args.align_images is not None:
            place(Path(args.align_images), image_dir, args.mode)
        elif not image_dir.exists() and args.download:
            fetch_zip(ALIGN_IMAGES_URL, image_dir, cache / "llava-pretrain-images.zip")
        return
    for part in FINETUNE_PARTS:
        target = image_dir / part.target
        source = getattr(args, part.option)
        if source is not None:
            place(resolve_source(Path(source), part.target), target, args.mode)
        elif not target.exists() and args.download:
            if part.url is None:
                say(f"  {target}: no public direct download; fetch OCR-VQA with its own script, then pass --ocr-vqa")
            else:
                fetch_zip(part.url, target.parent, cache / f"{part.target.replace('/', '-')}.zip")


def fix_extensions(records: list, image_dir: Path) -> int:
    """OCR-VQA ships .gif/.png files that LLaVA's JSON names .jpg: write the .jpg the JSON expects (RGB JPEG)."""
    fixed = 0
    for record in records:
        for rel in image_relpaths(record) if isinstance(record, dict) else []:
            path = image_dir / rel
            if path.exists():
                continue
            siblings = [path.with_suffix(s) for s in IMAGE_SUFFIXES if path.with_suffix(s).is_file()]
            if siblings:
                with Image.open(siblings[0]) as image:
                    image.convert("RGB").save(path, "JPEG", quality=95)
                fixed += 1
    return fixed


def summarize_folders(records: list, image_dir: Path) -> None:
    """Per top-level image folder: how many files the JSON references and whether the folder is there."""
    folders: Counter[str] = Counter()
    text_only = 0
    for record in records:
        paths = image_relpaths(record) if isinstance(record, dict) and record.get("image") else []
        text_only += not paths
        folders.update("/".join(Path(p).parts[:-1][:2]) or "." for p in paths)
    for folder, count in sorted(folders.items()):
        state = "present" if (image_dir / folder).is_dir() else "MISSING"
        say(f"  {folder:<24} {count:>8} image references   {state}")
    say(f"  {'(text-only rows)':<24} {text_only:>8}")


def check_stage(args: argparse.Namespace, stage: Stage, json_file: Path, image_dir: Path) -> bool:
    say(f"[{stage}] checking {json_file}")
    try:
        records = load_records(json_file)
    except DatasetError as error:
        say(f"  {error}")
        return False
    say(f"  {len(records)} samples")
    summarize_folders(records, image_dir)
    if args.fix_extensions:
        say(f"  wrote {fix_extensions(records, image_dir)} .jpg file(s) from same-named .gif/.png files")
    tokenizer = sample_tokenizer(args)
    options = PreflightOptions(check_images=args.check_images, num_threads=args.num_threads,
                               progress_every=args.progress_every)
    record_kind = "caption" if stage is Stage.ALIGN else "conversation"
    report = run_preflight(records, image_dir, json_file, record_kind, tokenizer, args.max_images, options)
    say(report.table(max_examples=args.examples))
    return report.ok


def sample_tokenizer(args: argparse.Namespace) -> SampleTokenizer | None:
    """With --llm-backbone-id, the tokenizer the length check uses (an unknown id or a bad --llm-path is a user
    error); else None (no length check)."""
    if args.llm_backbone_id is None:
        return None
    import torch

    from prismatic.models.materialize import get_llm_backbone_and_tokenizer

    with user_errors(), torch.device("meta"):  # the tokenizer is what counts; no weights are read or allocated
        llm, _ = get_llm_backbone_and_tokenizer(
            args.llm_backbone_id, llm_max_length=args.llm_max_length, inference_mode=True,
            pretrained_path=args.llm_path,
        )
    return SampleTokenizer(llm.conversation_tokenizer(), args.num_visual_tokens)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EXPECTED_TREES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    layouts = ["llava-svd", "llava_svd", "llava-v15", "llava-custom"]
    parser.add_argument("--dataset", default="llava-svd", choices=layouts,
                        help="which layout to build (default: llava-svd); llava-custom only checks --finetune-json / "
                             "--align-json against --image-dir")
    parser.add_argument("--root", type=Path, default=Path("data"), help="dataset_root_dir of the config (data)")
    parser.add_argument("--stage", default="both", choices=["align", "finetune", "both"])
    sources = parser.add_argument_group("local sources (any subset; missing parts are reported)")
    sources.add_argument("--finetune-json", type=Path, help=LLAVA_FINETUNE_JSON)
    sources.add_argument("--align-json", type=Path, help=LLAVA_ALIGN_JSON)
    sources.add_argument("--align-images", type=Path, help="LLaVA-Pretrain images (the folder holding 00000/ ...)")
    sources.add_argument("--coco", type=Path, help="COCO train2017 (or its parent)")
    sources.add_argument("--gqa", type=Path, help="GQA images (or its parent)")
    sources.add_argument("--ocr-vqa", dest="ocr_vqa", type=Path, help="OCR-VQA images (or its parent)")
    sources.add_argument("--textvqa", type=Path, help="TextVQA train_images (or its parent)")
    sources.add_argument("--vg", type=Path, help="Visual Genome folder holding VG_100K/ and VG_100K_2/")
    parser.add_argument("--image-dir", type=Path, help="llava-custom: the folder the JSON's image paths are relative to")
    parser.add_argument("--mode", default="symlink", choices=["symlink", "copy"], help="how to place local sources")
    parser.add_argument("--download", action="store_true", help="fetch missing parts from their public URLs")
    parser.add_argument("--check-only", action="store_true", help="do not touch the tree; only validate it")
    parser.add_argument("--fix-extensions", action="store_true",
                        help="write the .jpg the JSON names from a same-named .gif/.png (OCR-VQA); writes into sources "
                             "that are symlinked")
    check = parser.add_argument_group("validation (the training preflight)")
    check.add_argument("--check-images", default="load", choices=IMAGE_CHECKS,
                       help="load: decode every image (finds truncation); header: open only; none")
    check.add_argument("--num-threads", type=int, default=None, help="image-check threads (default 4 x CPUs, <= 32)")
    check.add_argument("--progress-every", type=int, default=20_000, help="a progress line every N items")
    check.add_argument("--examples", type=int, default=10, help="bad samples to show in the table")
    check.add_argument("--max-images", type=int, default=8, help="images one sample may have (SVD frame slots)")
    check.add_argument("--llm-backbone-id", default=None, help="also check lengths with this LLM's tokenizer")
    check.add_argument("--llm-path", default=None, help="local directory of that LLM (tokenizer files)")
    check.add_argument("--llm-max-length", type=int, default=2048)
    check.add_argument("--num-visual-tokens", type=int, default=648, help="648 for DyVA (256 SigLIP + 392 SVD)")
    return parser.parse_args(argv)


def custom_stages(args: argparse.Namespace, stages: list[Stage]) -> list[Stage]:
    """llava-custom lays nothing out: the stages whose JSON the user passed, each checked to exist."""
    if args.image_dir is None:
        raise UserError("--dataset llava-custom needs --image-dir (and --finetune-json or --align-json).")
    if not args.image_dir.is_dir():
        raise UserError(f"--image-dir {args.image_dir} is not a directory.")
    chosen = []
    for stage in stages:
        option, json_file = (("--finetune-json", args.finetune_json) if stage is Stage.FINETUNE
                             else ("--align-json", args.align_json))  # fmt: skip
        if json_file is not None and not json_file.is_file():
            raise UserError(f"{option} {json_file} is not a file.")
        if json_file is not None:
            chosen.append(stage)
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Lay out (unless --check-only or llava-custom) and check each stage; 0 when every check passed, 1 otherwise.
    Bad flags and missing sources raise a UserError (`run_cli`: `error: ...`, status 2)."""
    with user_errors():
        args = parse_args(argv)
        config = get_dataset_config(args.dataset)
        config.dataset_root_dir = args.root
        stages = [Stage.ALIGN, Stage.FINETUNE] if args.stage == "both" else [Stage(args.stage)]
    custom = args.dataset == "llava-custom"
    if custom:  # nothing to lay out: check the user's own files
        stages = custom_stages(args, stages)
    ok = True
    for stage in stages:
        json_file, image_dir = config.components(stage)
        if custom:
            json_file, image_dir = (args.finetune_json if stage is Stage.FINETUNE else args.align_json), args.image_dir
        elif not args.check_only:
            with user_errors():  # the sources and --root are the user's (a read-only --root: PermissionError)
                lay_out_stage(args, stage, json_file, image_dir)
        ok = check_stage(args, stage, json_file, image_dir) and ok
    say("All checks passed." if ok else "Problems found (see above); fix them, or train with on_bad_sample=skip.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
