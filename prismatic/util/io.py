"""Crash-safe file writes: readers see the old file or the complete new one, never a partial one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(handle)` on a temporary sibling, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_json_atomic(path: Path, payload: Any, indent: int | None = None) -> None:
    """`payload` as JSON (compact unless `indent`), written atomically."""
    separators = (",", ":") if indent is None else None
    text = json.dumps(payload, indent=indent, separators=separators)
    write_atomic(path, lambda handle: handle.write(text.encode()))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()))
