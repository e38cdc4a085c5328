"""Shared helpers of the evaluation-harness tests: small images, and running one benchmark family end to end
(prepare -> evaluate on the tiny run's model -> score) through `prismatic.eval.harness`, as scripts/evaluate.py does.

The model comes from the `tiny_vlm` session fixture (conftest.py): `prismatic.load` of the shared tiny DyVA run
(2 keyframe slots), in fp32 on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from prismatic.eval.benchmark import Benchmark, Prediction
from prismatic.eval.harness import evaluate_benchmark
from prismatic.eval.results import ModelFingerprint
from prismatic.eval.runner import RunOptions
from prismatic.util.distributed import DistributedContext

SINGLE_PROCESS = DistributedContext(0, 1, 0, 1, __import__("torch").device("cpu"))
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 230, 20), (200, 30, 200), (30, 200, 200)]


def write_image(path: Path, index: int, size: int = 24) -> Path:
    """A small RGB image whose content depends on `index` (so the SVD noise differs per image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), COLOURS[index % len(COLOURS)])
    image.putpixel((index % size, (index // size) % size), (index % 256, 0, 0))
    image.save(path)
    return path


def run_family(
    benchmark: Benchmark, vlm: Any, fingerprint: ModelFingerprint, data_root: Path, results_dir: Path,
    batch_size: int = 3, **options: Any,
) -> tuple[dict[str, float], dict[str, Prediction]]:
    """Prepare (from `<data_root>/<directory>/download`), evaluate and score; the metrics and the saved predictions."""
    benchmark.prepare(data_root)
    metrics = evaluate_benchmark(vlm, fingerprint, benchmark, data_root, results_dir, SINGLE_PROCESS,
                                 RunOptions(batch_size=batch_size, **options), log=lambda _: None)
    folder = results_dir / fingerprint.tag / benchmark.name
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    return metrics, {row["id"]: Prediction.from_json(row) for row in rows}


VSR_RELATIONS = ["behind", "on", "near", "facing", "next to", "left of", "touching", "far from"]


def write_vsr_raw(data_root: Path, count: int = 10) -> Path:
    """VSR's raw download (test.jsonl + images/) with `count` statements over count - 1 images (one image twice)."""
    raw = data_root / "vsr" / "download"
    rows = []
    for i in range(count):
        image = f"{min(i, count - 2):012d}.jpg"
        write_image(raw / "images" / image, min(i, count - 2))
        relation = VSR_RELATIONS[i % len(VSR_RELATIONS)]
        rows.append({"image": image, "image_link": f"http://images.cocodataset.org/train2017/{image}",
                     "caption": f"The cat is {relation} the dog.", "label": int(i % 3 != 0), "relation": relation,
                     "subj": "cat", "obj": "dog", "annotator_id": 1, "vote_true_validator_id": "[1]",
                     "vote_false_validator_id": "[]"})  # fmt: skip
    (raw / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return raw
