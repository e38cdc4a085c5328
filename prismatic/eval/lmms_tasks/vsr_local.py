"""Functions of the `dyva_vsr_local` lmms-eval task (`dyva_vsr_local.yaml`): VSR-style True/False statements about
local images, scored in closed form (the model's `candidates` generation kwarg).

lmms-eval imports this file by path (`!function vsr_local.<name>` in the YAML), not as part of the `prismatic`
package. A record is one JSON line: `image` (a path, relative to the task's `image_root` unless absolute), `caption`
(the statement) and `label` (1 / true / "True" when the statement holds), as VSR's `test.jsonl`; other fields (VSR's
`relation`, ...) are kept in the logged samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from prismatic.eval.prompts import true_false_prompt

TRUE, FALSE = "True", "False"


def image_path(doc: dict[str, Any], image_root: str | None) -> Path:
    """The record's image: an absolute path as is, a relative one under `image_root` (itself relative to the working
    directory unless absolute)."""
    path = Path(str(doc["image"])).expanduser()
    if path.is_absolute() or not image_root:
        return path
    return Path(image_root).expanduser() / path


def doc_to_visual(doc: dict[str, Any], task_kwargs: dict[str, Any] | None = None) -> list[Image.Image]:
    path = image_path(doc, (task_kwargs or {}).get("image_root"))
    if not path.is_file():
        raise FileNotFoundError(
            f"Image {path} of record {doc.get('caption')!r} not found. Relative `image` paths are read under the "
            "task's image_root (lmms_eval_specific_kwargs.default.image_root, relative to the working directory); "
            "run from the folder holding test.jsonl and images/, or point the task at your data (README.md)."
        )
    with Image.open(path) as image:
        return [image.convert("RGB")]


def doc_to_text(doc: dict[str, Any], task_kwargs: dict[str, Any] | None = None) -> str:
    """The protocol's message (the one `prismatic.eval.benchmarks.vsr` asks); the model wraps it in its prompt."""
    return true_false_prompt(str(doc["caption"]))


def doc_to_target(doc: dict[str, Any], target_kwargs: dict[str, Any] | None = None) -> str:
    label = doc["label"]
    if isinstance(label, str):
        text = label.strip().lower()
        if text not in ("true", "false", "1", "0"):
            raise ValueError(f"Record {doc.get('caption')!r} has label {label!r}; use 1/0, true/false or True/False.")
        return TRUE if text in ("true", "1") else FALSE
    return TRUE if bool(label) else FALSE


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Accuracy: the answer (a candidate, so exactly "True" or "False") against the label."""
    answer = results[0].strip() if results else ""
    return {"accuracy": float(answer == doc_to_target(doc))}
