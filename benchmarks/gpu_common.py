"""What every part of the GPU benchmark (`benchmarks/gpu_shapes.py`) shares: the result section, the measured matmul
ceiling, the candidate loop under a time budget, the world-size-1 process group, and DyVA-shaped training inputs.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks import harness
from benchmarks.harness import Comparison, Measurement, measure, time_call
from prismatic.models.backbones.vision.base_vision import collate_pixel_values, feature_key
from prismatic.util.constants import IGNORE_INDEX
from prismatic.util.distributed import init_distributed

H200_MEASURED_MATMUL = 790e12  # bf16 dense matmul FLOP/s measured on H200s (the reference ceiling)
Candidates = dict[str, tuple[str, Callable[[], Any]]]


@dataclass
class Section:
    """One part's results; `notes` also carry the errors of candidates that could not run."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    dimensions: dict[str, Any] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    save: Callable[[], Any] = field(default=lambda: None, repr=False)  # writes the results so far

    def note(self, text: str) -> None:
        print(f"[{self.name}] {text}", flush=True)
        self.notes.append(f"[{self.name}] {text}")


def matmul_ceiling(device: torch.device) -> float:
    """Measured bf16 matmul FLOP/s of this device (square 8192 products on a GPU; 512 on a CPU)."""
    n, iters = (8192, 50) if device.type == "cuda" else (512, 3)
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(iters // 3):  # warm-up (clocks, cuBLAS heuristics)
        a @ b
    harness.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    harness.synchronize(device)
    return 2.0 * n**3 * iters / (time.perf_counter() - start)


def run_each(candidates: Candidates, device: torch.device, deadline: float, warmup: int, reps: int, section: Section,
             after: Callable[[str, Measurement], None]) -> dict[str, Measurement]:  # fmt: skip
    """Each candidate alone, in order: a first call (its warm-up; a second one if the first seems too slow), then,
    if `warmup + reps + 1` more calls fit the time budget, `measure` (warm-up, timed calls, one memory call) and
    `after(name, measurement)`; the results so far are saved after each candidate. An error (e.g. out of memory) is
    printed and noted, and costs only that candidate."""
    measured: dict[str, Measurement] = {}
    for name, (description, fn) in candidates.items():
        try:
            wall, _ = time_call(fn, device)
            if time.monotonic() + wall * (warmup + reps + 1) > deadline:  # one-off costs of a first call? time again
                wall, _ = time_call(fn, device)
            if time.monotonic() + wall * (warmup + reps + 1) > deadline:
                section.note(f"{name}: skipped ({warmup + reps + 1} calls of {wall:.2f} s do not fit the time budget)")
                continue
            measured[name] = measure({name: (description, fn)}, device, warmup, reps)[name]
            section.measurements.append(measured[name])
            after(name, measured[name])
        except Exception as error:
            traceback.print_exc()
            section.note(f"{name}: failed ({type(error).__name__}: {str(error)[:300]})")
            if device.type == "cuda":
                torch.cuda.empty_cache()
        section.save()
    return measured


def start_process_group(device: torch.device) -> Any:
    """World size 1 through the project's own setup (`init_distributed`: NCCL on CUDA, gloo on CPU)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}.items():  # fmt: skip
        os.environ.setdefault(key, value)
    ctx = init_distributed()
    if ctx.device.type != device.type:
        raise ValueError(f"The train part runs on the default device ({ctx.device}), not {device}.")
    return ctx


def make_batch(vlm: Any, b: int, text_len: int, device: torch.device, live: bool) -> dict[str, Any]:
    """b samples of text_len random text tokens (the second half labelled) plus one image each: its features
    precomputed in bf16 (as the frozen-feature cache stores them) or, `live`, pixels for the frozen encoders."""
    g = torch.Generator().manual_seed(b)
    ids = torch.randint(0, len(vlm.llm_backbone.tokenizer), (b, text_len), generator=g)
    labels = ids.clone()
    labels[:, : text_len // 2] = IGNORE_INDEX
    if live:
        transform = vlm.vision_backbone.get_image_transform()
        rng = np.random.default_rng(b)
        images = [Image.fromarray(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)) for _ in range(b)]
        pixel_values = collate_pixel_values([transform(image) for image in images])
    else:
        pixel_values = {feature_key(s.name): torch.randn(b, s.num_tokens, s.embed_dim, generator=g).to(torch.bfloat16)
                        for s in vlm.vision_backbone.streams}  # fmt: skip
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "has_image": torch.ones(b, dtype=torch.bool), "pixel_values": pixel_values}  # fmt: skip
    return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in batch.items()}  # fmt: skip
