"""Readers shared by the benchmark families whose raw files are hub parquet exports or multiple-choice text: parquet
rows a batch at a time (pyarrow, the `eval` extra), image cells as bytes, options written into a question, the gold
option letter.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prismatic.eval.benchmark import BenchmarkDataError, EvalItem, Record, letters
from prismatic.eval.prompts import LETTER_ANSWER, multiple_choice_prompt


def option_chain(text: str, marker: re.Pattern[str], start: int = 0) -> tuple[int, list[str]] | None:
    """Options written into `text` after `start`: the chain of `marker` matches (group 1 = the letter) A, B, C, ... in
    order (the first longest one when several A's start a chain), each option running to the next marker (the last
    to the end; separating commas and semicolons dropped). (where the chain starts, options), or None for fewer than
    two options or an empty one."""
    markers = list(marker.finditer(text, start))
    chain: list[re.Match[str]] = []
    for i, first in enumerate(markers):
        if first.group(1) != "A":
            continue
        candidate, wanted = [first], "B"
        for later in markers[i + 1 :]:
            if later.group(1) == wanted:
                candidate.append(later)
                wanted = chr(ord(wanted) + 1)
        if len(candidate) > len(chain):
            chain = candidate
    if len(chain) < 2:
        return None
    ends = [m.start() for m in chain[1:]] + [len(text)]
    options = [text[m.end() : end].strip().rstrip(",;(").strip() for m, end in zip(chain, ends)]
    return (chain[0].start(), options) if all(options) else None


def gold_letter(answer: Any, where: str = "") -> str:
    """The gold option letter: "A", "(B)", "c", "D. text" -> the upper-case letter."""
    match = re.match(r"\s*\(?([A-Za-z])(?![A-Za-z])", str(answer))
    if match is None:
        raise BenchmarkDataError(f"{where}: answer {answer!r} is not an option letter.")
    return match.group(1).upper()


def image_bytes(value: Any, title: str = "") -> bytes:
    """An image cell as raw bytes (plain bytes, or a datasets-style {"bytes": ..., "path": ...} struct)."""
    if isinstance(value, Mapping):
        value = value.get("bytes")
    if not isinstance(value, bytes | bytearray) or not value:
        raise BenchmarkDataError(f"{title}: an image cell holds {type(value).__name__}, not image bytes.")
    return bytes(value)


def write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def parquet_rows(
    path: Path, title: str, columns: list[str] | None = None, batch_size: int = 64
) -> Iterator[dict[str, Any]]:
    """The rows of a parquet file (only `columns` when given), a batch at a time, so the images of the whole file
    need not fit in memory."""
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise BenchmarkDataError(
            f"{title}: reading {path.name} needs pyarrow, the `eval` extra: pip install -e .[eval]"
        ) from error
    parquet = pq.ParquetFile(path)
    missing = sorted(set(columns or ()) - set(parquet.schema_arrow.names))
    if missing:
        raise BenchmarkDataError(f"{title}: {path} has no column(s) {missing}; is it the right file?")
    for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        yield from batch.to_pylist()


def embedded_choice_item(qid: str, record: Record, fallback_letters: int = 4) -> EvalItem:
    """The item of a record whose options were written into its question (MMSI-Bench, MindCube): the protocol's
    lettered prompt over the parsed `stem` and `choices`; when they could not be split off, the whole `question` and
    the letter instruction, with candidates A.. up to `fallback_letters` (or the gold letter, if later)."""
    if record["choices"]:
        message = multiple_choice_prompt(record["stem"], record["choices"])
        candidates = letters(len(record["choices"]))
    else:
        count = max(fallback_letters, ord(record["answer"]) - ord("A") + 1)
        message, candidates = f"{record['question'].strip()}\n{LETTER_ANSWER}", letters(count)
    return EvalItem(qid, message, tuple(record["img_paths"]), candidates)
