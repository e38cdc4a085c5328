"""Benchmark 5: samples/s of the data pipeline (LLaVA-format dataset + collator in a DataLoader with worker processes)
against the samples/s a train step consumes.

The dataset is synthetic but shaped like LLaVA-665k rows: 640x480 JPEG photos-like images (smooth gradients plus
noise) and three-turn conversations, read from disk, tokenized with the LLM's own conversation tokenizer, transformed
for both DyVA streams (SigLIP pixels, uint8 SVD frames) and collated. Each timed round opens a new epoch on a loader
with persistent workers and pulls `--batches` batches, so worker start-up is paid once (in the warm-up) and the
round includes refilling the prefetch queue. The train-step rate comes from benchmark 1's JSON in the same results
directory (our DyVA step, and the faster SigLIP-only step, which is what a cached-feature step approaches), or is
measured here when that file is absent. Goal: pipeline / train-step samples/s >= 5.

Also reported, for information: the same pipeline with the real DyVA transforms (SigLIP 224 px + SVD 448 px).

    python -m benchmarks.data_pipeline [--smoke] [--workers 2]
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks import models, steps
from benchmarks.harness import Comparison, argument_parser, measure, parse_settings, write_results
from prismatic.conf.datasets import get_dataset_config
from prismatic.models.backbones.vision.base_vision import ImageTransform
from prismatic.models.backbones.vision.dual import MergedTransform
from prismatic.models.backbones.vision.svd_unet import SVDImageTransform
from prismatic.preprocessing.materialize import get_dataset_and_collator

NAME = "data_pipeline"
WORDS = ["the", "a", "red", "blue", "ball", "moves", "left", "right", "towards", "camera", "table", "person", "holds",
         "cup", "while", "dog", "runs", "across", "grass", "near", "tree", "car", "drives", "slowly", "down"]


def write_dataset(root: Path, num_images: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> Path:
    """LLaVA-format finetune JSON + JPEGs (COCO-like 640x480) under `root`; three turns of ~40-word answers."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    records = []
    for i in range(num_images):
        base = np.stack([(xx * (i + 1) / 7 + yy / 3) % 256, (yy * (i + 2) / 5) % 256, (xx + yy + 40 * i) % 256], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{i}.jpg", quality=90)
        turns = []
        for turn in range(3):
            question = " ".join(rng.choice(WORDS, 12)) + "?"
            turns.append({"from": "human", "value": ("<image>\n" if turn == 0 else "") + question})
            turns.append({"from": "gpt", "value": " ".join(rng.choice(WORDS, 40)) + "."})
        records.append({"id": str(i), "image": f"{i}.jpg", "conversations": turns})
    (root / "finetune.json").write_text(json.dumps(records))
    return root


def loader_round(dataset: Any, collator: Any, batch_size: int, workers: int, batches: int) -> Callable[[], int]:
    """A callable that pulls `batches` batches from a fresh epoch of a persistent-worker loader; returns samples."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collator, num_workers=workers,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))  # fmt: skip

    def pull() -> int:
        samples, iterator = 0, iter(loader)
        for _ in range(batches):
            samples += len(next(iterator)["input_ids"])
        return samples

    return pull


def train_step_rates(out: Path, dims: models.BenchDims, device: torch.device, warmup: int,
                     reps: int) -> tuple[dict[str, float], str]:  # fmt: skip
    """Samples/s of our DyVA and SigLIP-only train steps: from benchmark 1's results if present, else measured."""
    path = out / "train_step.json"
    if path.is_file():
        rows = {m["name"]: m for m in json.loads(path.read_text())["measurements"]}
        if {"ours_dyva", "ours_siglip"} <= set(rows):
            return {k: rows[k]["extra"]["samples_per_s"] for k in ("ours_dyva", "ours_siglip")}, str(path.name)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    candidates = {"ours_dyva": ("", steps.our_train_step(models.dyva_vlm(dims), dims, device, dtype)),
                  "ours_siglip": ("", steps.our_train_step(models.siglip_vlm(dims), dims, device, dtype))}  # fmt: skip
    measured = measure(candidates, device, warmup, reps, memory=False)
    return {k: dims.batch_size / m.median_s for k, m in measured.items()}, "measured here"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--batches", type=int, default=None, help="batches per timed round (default 16; smoke 2)")
    settings, args = parse_settings(parser, argv)
    dims = models.dims_for(settings.smoke)
    batches = args.batches or (2 if settings.smoke else 16)
    num_images = 8 if settings.smoke else 64
    vlm = models.dyva_vlm(dims)  # for its transform, tokenizer and number of visual tokens
    static_transform = vlm.vision_backbone.static.get_image_transform()
    transforms: dict[str, ImageTransform] = {
        "pipeline": vlm.vision_backbone.get_image_transform(),
        "pipeline_real_size": MergedTransform([static_transform, SVDImageTransform(448, dims.svd_frames)]),
    }
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = write_dataset(Path(tmp), num_images, (160, 120) if settings.smoke else (640, 480))
        config = get_dataset_config("llava-custom")
        config.dataset_root_dir, config.finetune_stage_components = root, (Path("finetune.json"), Path("images"))
        candidates = {}
        for name, transform in transforms.items():
            tokenizer = vlm.llm_backbone.conversation_tokenizer()
            dataset, collator = get_dataset_and_collator("finetune", config, transform, tokenizer, vlm.num_visual_tokens,
                                                         preflight=False)  # fmt: skip
            what = "DyVA transforms at benchmark size" if name == "pipeline" else "SigLIP 224 px + SVD 448 px"
            candidates[name] = (f"{what}: {args.workers} workers, {batches} batches of {dims.batch_size}",
                                loader_round(dataset, collator, dims.batch_size, args.workers, batches))  # fmt: skip
        measured = measure(candidates, torch.device("cpu"), max(settings.warmup, 1), settings.reps, memory=False)
    samples = batches * dims.batch_size
    for m in measured.values():
        m.extra["samples_per_s"] = samples / m.median_s
    rates, source = train_step_rates(settings.out, dims, settings.device, settings.warmup, settings.reps)
    pipeline = measured["pipeline"].extra["samples_per_s"]
    comparisons = [
        Comparison("data pipeline vs DyVA train step", "pipeline / train-step samples/s", pipeline / rates["ours_dyva"],
                   ">= 5", note=f"{pipeline:.1f} vs {rates['ours_dyva']:.2f} samples/s"),
        Comparison("data pipeline vs SigLIP-only train step", "pipeline / train-step samples/s",
                   pipeline / rates["ours_siglip"], ">= 5",
                   note=f"{pipeline:.1f} vs {rates['ours_siglip']:.2f} samples/s (a cached-feature step is about this)"),
    ]  # fmt: skip
    notes = [
        f"{num_images} JPEGs of {'160x120' if settings.smoke else '640x480'}, three-turn conversations; train-step "
        f"rates: {source}.",
        "On this CPU machine the loader workers and the train step share the same cores; on a GPU node the workers "
        "have CPU cores of their own, so the pipeline rate is what it can supply per rank.",
    ]
    write_results(NAME, "Data pipeline: dataset + collator vs train-step consumption", settings.out, settings.device,
                  {**settings.to_dict(), "workers": args.workers, "batches_per_round": batches}, dims.to_dict(),
                  list(measured.values()), comparisons, notes)  # fmt: skip
    return {"measurements": list(measured.values()), "comparisons": comparisons}


if __name__ == "__main__":
    main()
