"""Score a model on a LLaVA-format split with short answers: batched greedy answers, exact match after normalisation,
a table by question type.

    python scripts/evaluate.py --model runs/dyva-tiny --data ~/.cache/dyva-worldlm/demo/eval-motion.json

Each record's first human turn (without `<image>`) is the question; its `image` (a path, or a list of frame paths for
a multi-frame sample) is relative to --image_dir (default: the JSON's folder). Predictions go to --output as JSON
Lines, one per sample, written batch by batch. The model part is `vlm_predictor`; everything else works with any
`predict(batch) -> answers` callable, which is how the tests run it without a model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from prismatic.eval.scoring import (
    ScoreReport,
    answers_match,
    format_table,
    load_split,
    question_of,
    question_type_of,
    reference_answer,
    score,
)
from prismatic.preprocessing.records import image_relpaths

DEFAULT_MAX_NEW_TOKENS = 8


@dataclass(frozen=True)
class EvalSample:
    """One question to ask: `images` is empty (text only), one path, or the frames of a multi-frame sample."""

    id: str
    question: str
    images: tuple[Path, ...]
    multi_frame: bool  # the record's `image` was a list (frames), even if it held a single path
    question_type: str
    answer: str


Predictor = Callable[[Sequence[EvalSample]], list[str]]


def to_samples(records: Sequence[Mapping[str, Any]], image_dir: Path) -> list[EvalSample]:
    samples = []
    for record in records:
        paths = image_relpaths(dict(record))
        samples.append(EvalSample(
            id=str(record["id"]),
            question=question_of(record),
            images=tuple(image_dir / p for p in paths),
            multi_frame=isinstance(record.get("image"), list),
            question_type=question_type_of(record),
            answer=reference_answer(record),
        ))
    return samples


def load_split_samples(
    data: Path, image_dir: Path | None = None, max_samples: int | None = None
) -> tuple[list[Mapping[str, Any]], list[EvalSample]]:
    """The records to score (the first `max_samples`) and their samples; images are checked to exist up front."""
    records = load_split(data)[:max_samples] if max_samples is not None else load_split(data)
    samples = to_samples(records, image_dir if image_dir is not None else Path(data).parent)
    missing = [str(p) for s in samples for p in s.images if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) of {data} are missing, e.g. {missing[0]}; pass the folder the JSON's image paths "
            "are relative to with --image_dir."
        )
    return records, samples


def batched(items: Sequence[EvalSample], size: int) -> Iterator[Sequence[EvalSample]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_predictions(
    samples: Sequence[EvalSample], predict: Predictor, batch_size: int, output: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Answers for every sample, in batches; each batch is appended to `output` (JSON Lines) as soon as it is done."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    predictions: dict[str, str] = {}
    handle = None
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        handle = output.open("w", encoding="utf-8")
    start, last_log = time.perf_counter(), 0.0
    try:
        for batch in batched(samples, batch_size):
            answers = predict(batch)
            if len(answers) != len(batch):
                raise RuntimeError(f"The predictor returned {len(answers)} answers for a batch of {len(batch)}.")
            for sample, answer in zip(batch, answers):
                predictions[sample.id] = answer
                if handle is not None:
                    handle.write(json.dumps(prediction_row(sample, answer), ensure_ascii=False) + "\n")
            if handle is not None:
                handle.flush()
            elapsed = time.perf_counter() - start
            if elapsed - last_log >= 10 or len(predictions) == len(samples):
                log(f"[evaluate] {len(predictions)}/{len(samples)} answered ({elapsed:.1f}s)")
                last_log = elapsed
    finally:
        if handle is not None:
            handle.close()
    return predictions


def prediction_row(sample: EvalSample, prediction: str) -> dict[str, Any]:
    return {
        "id": sample.id, "question_type": sample.question_type, "question": sample.question,
        "prediction": prediction, "answer": sample.answer, "correct": answers_match(prediction, sample.answer),
    }


def evaluate(
    data: Path, predict: Predictor, batch_size: int = 8, max_samples: int | None = None, output: Path | None = None,
    image_dir: Path | None = None, log: Callable[[str], None] = print,
) -> ScoreReport:
    """Predict every (or the first `max_samples`) sample of `data`, score by question type, return the report."""
    records, samples = load_split_samples(data, image_dir, max_samples)
    predictions = run_predictions(samples, predict, batch_size, output, log)
    return score(predictions, records)


# === The model ===
def open_images(sample: EvalSample) -> Image.Image | list[Image.Image] | None:
    """What `generate` takes per prompt: one image, the frames of a multi-frame sample, or None (text only)."""
    images = [Image.open(path).convert("RGB") for path in sample.images]
    if not images:
        return None
    return images if sample.multi_frame else images[0]


def vlm_predictor(vlm: Any, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> Predictor:
    """Batched greedy answers from a loaded VLM, with prompts in its own chat format."""

    def predict(batch: Sequence[EvalSample]) -> list[str]:
        prompts = []
        for sample in batch:
            builder = vlm.get_prompt_builder()
            builder.add_turn("human", sample.question)
            prompts.append(builder.get_prompt())
        images = [open_images(sample) for sample in batch]
        answers = vlm.generate(images, prompts, do_sample=False, max_new_tokens=max_new_tokens)
        return [answers] if isinstance(answers, str) else [str(a).strip() for a in answers]

    return predict


def load_model(model: str, hf_token: str | None, device: str) -> Any:
    try:
        from prismatic import load  # lazy: scoring works without the model stack
    except ImportError as error:
        raise SystemExit(
            f"scripts/evaluate.py needs `prismatic.load` to read --model, but it cannot be imported ({error}). "
            "Reinstall the package (`pip install -e .`) from a checkout that has it."
        ) from error
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    vlm = load(model, hf_token=hf_token)
    vlm.to(device)
    vlm.eval()
    return vlm


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a run directory or a registered model id (prismatic.load)")
    parser.add_argument("--data", required=True, type=Path, help="LLaVA-format JSON with short answers")
    parser.add_argument("--image_dir", type=Path, default=None, help="folder of the image paths (default: JSON's)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_samples", type=int, default=None, help="score only the first N samples")
    parser.add_argument("--output", type=Path, default=None, help="predictions as JSON Lines")
    parser.add_argument("--report", type=Path, default=None, help="per-type accuracies as JSON")
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--hf_token", default=None, help="token for gated hub weights (or set HF_TOKEN)")
    args = parser.parse_args(argv)
    if args.max_samples is not None and args.max_samples < 1:
        parser.error("--max_samples must be >= 1")
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    return args


def report_and_save(report: ScoreReport, title: str, report_path: Path | None) -> str:
    """The table to print; also writes the JSON report when asked."""
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return format_table(report, title)


def main(argv: list[str] | None = None, predict: Predictor | None = None) -> int:
    """Run the evaluation; `predict` replaces the model (then --model is only a label)."""
    args = parse_args(argv)
    if predict is None:
        predict = vlm_predictor(load_model(args.model, args.hf_token, args.device), args.max_new_tokens)
    report = evaluate(args.data, predict, args.batch_size, args.max_samples, args.output, args.image_dir,
                      log=lambda message: print(message, file=sys.stderr))
    print(report_and_save(report, f"{args.model} on {args.data}", args.report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
