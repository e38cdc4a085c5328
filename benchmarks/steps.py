"""Train steps to time: ours (the framework's `SingleDeviceStrategy.train_step`) and the peers (Llava, optionally with
a separately run released SVD encoder), on identical synthetic batches, with identical optimizer work.

Both sides run forward + backward + gradient clipping (max norm 1) + AdamW (same parameter groups, learning rate and
weight decay) + zero_grad, in the same precision: fp32, or bf16 autocast with frozen encoders stored in bf16 (what
our strategy does with mixed precision; the peer's frozen parts are cast the same way so neither pays per-op casts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from benchmarks.models import IMAGE_TOKEN_ID, BenchDims, svd_encoder_tokens
from benchmarks.released_svd import ReleasedSVDFeatures
from prismatic.models.backbones.vision.base_vision import PixelValues
from prismatic.models.vlms.prismatic import PrismaticVLM
from prismatic.training.optimizer import adamw, build_param_groups
from prismatic.training.options import Precision, StageOptimization
from prismatic.training.strategies import SingleDeviceStrategy
from prismatic.util.constants import IGNORE_INDEX
from prismatic.util.distributed import DistributedContext

LEARNING_RATE, WEIGHT_DECAY, MAX_GRAD_NORM = 2e-5, 0.1, 1.0
HALF = torch.bfloat16


def precision_for(dtype: str) -> Precision:
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
    return Precision(mixed=dtype == "bf16")


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=HALF) if dtype == "bf16" else contextlib.nullcontext()


# === Batches ===
def text_batch(dims: BenchDims, vocab_size: int = 32000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) [B, L]: BOS then random text; the first half is prompt (label -100), the rest answer."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (dims.batch_size, dims.text_tokens), generator=g)
    ids[:, 0] = 1  # BOS: the visual tokens go right after it
    labels = ids.clone()
    labels[:, : dims.text_tokens // 2] = IGNORE_INDEX
    return ids, labels


def pixel_batch(dims: BenchDims, with_svd: bool, seed: int = 0) -> PixelValues:
    """Normalised SigLIP pixels and (optionally) uint8 SVD frames, one image per sample, as the collator emits."""
    g = torch.Generator().manual_seed(seed)
    pixels: PixelValues = {"siglip": torch.randn(dims.batch_size, 3, dims.image_size, dims.image_size, generator=g)}
    if with_svd:
        size = dims.svd_image_size
        pixels["svd"] = torch.randint(0, 256, (dims.batch_size, 1, 3, size, size), generator=g, dtype=torch.uint8)
        pixels["svd_count"] = torch.ones(dims.batch_size, dtype=torch.long)
    return pixels


def our_batch(dims: BenchDims, with_svd: bool) -> dict[str, Any]:
    ids, labels = text_batch(dims)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": pixel_batch(dims, with_svd), "has_image": torch.ones(len(ids), dtype=torch.bool),
            "padding_side": "right"}  # fmt: skip


# === Ours ===
def optimization(dims: BenchDims) -> StageOptimization:
    return StageOptimization(epochs=1, max_steps=None, global_batch_size=dims.batch_size,
                             per_device_batch_size=dims.batch_size, learning_rate=LEARNING_RATE,
                             weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM, lr_scheduler_type="constant",
                             warmup_ratio=0.0, train_strategy="single")  # fmt: skip


def our_strategy(vlm: PrismaticVLM, dims: BenchDims, device: torch.device, dtype: str) -> SingleDeviceStrategy:
    ctx = DistributedContext(0, 1, 0, 1, device)
    precision = precision_for(dtype)
    frozen_dtype = precision.vision_backbone_dtype(vision_trains=False)
    if frozen_dtype is not None:  # as build_vlm casts a frozen encoder for training
        vlm.vision_backbone.to(frozen_dtype)
    strategy = SingleDeviceStrategy(vlm, ctx, optimization(dims), precision, False, 10**6)
    strategy.setup()
    return strategy


def our_train_step(vlm: PrismaticVLM, dims: BenchDims, device: torch.device, dtype: str) -> Callable[[], Any]:
    strategy = our_strategy(vlm, dims, device, dtype)
    batch = our_batch(dims, with_svd="svd" in {s.name for s in vlm.vision_backbone.streams})
    return lambda: strategy.train_step([batch])


# === Peers ===
class PeerTrainStep:
    """Llava (+ optionally the released SVD encoder feeding a projector): one optimizer step per call."""

    def __init__(
        self,
        llava: nn.Module,
        dims: BenchDims,
        device: torch.device,
        dtype: str,
        released_svd: ReleasedSVDFeatures | None = None,
        svd_projector: nn.Module | None = None,
    ) -> None:
        self.llava, self.dims, self.device, self.dtype = llava.to(device), dims, device, dtype
        self.released_svd, self.svd_projector = released_svd, svd_projector
        if dtype == "bf16":  # frozen parts stored in bf16, as our strategy stores frozen encoders
            self.llava.model.vision_tower.to(HALF)
            if released_svd is not None:
                for module in (released_svd.pipe.vae, released_svd.pipe.unet, released_svd.pipe.image_encoder):
                    module.to(HALF)
        trainable: list[nn.Module] = [self.llava] + ([svd_projector.to(device)] if svd_projector is not None else [])
        self.params = [p for m in trainable for p in m.parameters() if p.requires_grad]
        # The same AdamW implementation as ours (fused where it applies): optimizer work is identical on both sides.
        self.optimizer = adamw([g for m in trainable for g in build_param_groups(m, LEARNING_RATE, WEIGHT_DECAY)])
        self.llava.train()
        self._inputs = self._build_inputs()

    def _build_inputs(self) -> dict[str, Any]:
        """Our text, image placeholders where our splice puts visual tokens: [BOS, IMG x Nv, (SVD slots), text]."""
        ids, labels = text_batch(self.dims)
        num_svd = self._num_svd_tokens()
        visual = torch.full((len(ids), self.dims.vit_tokens), IMAGE_TOKEN_ID)
        svd_slots = torch.full((len(ids), num_svd), 0)  # placeholders, replaced by projected SVD features
        full_ids = torch.cat([ids[:, :1], visual, svd_slots, ids[:, 1:]], dim=1)
        ignore = torch.full((len(ids), self.dims.vit_tokens + num_svd), IGNORE_INDEX)
        full_labels = torch.cat([labels[:, :1], ignore, labels[:, 1:]], dim=1)
        pixels = pixel_batch(self.dims, with_svd=self.released_svd is not None)
        return {"input_ids": full_ids, "labels": full_labels, "pixel_values": pixels["siglip"],
                "svd": pixels["svd"][:, 0] if "svd" in pixels else None, "num_svd": num_svd}  # fmt: skip

    def _num_svd_tokens(self) -> int:
        return 0 if self.released_svd is None else svd_encoder_tokens(self.dims)

    def _embeds_with_svd(self, ids: torch.Tensor, svd_frames: torch.Tensor, num_svd: int) -> torch.Tensor:
        assert self.released_svd is not None and self.svd_projector is not None
        with torch.no_grad():
            features = self.released_svd(svd_frames)
        projected = self.svd_projector(features.to(next(self.svd_projector.parameters()).dtype))
        embeds = self.llava.get_input_embeddings()(ids)
        start = 1 + self.dims.vit_tokens
        return torch.cat([embeds[:, :start], projected.to(embeds.dtype), embeds[:, start + num_svd :]], dim=1)

    def __call__(self) -> float:
        inputs, device = self._inputs, self.device
        ids, labels = inputs["input_ids"].to(device), inputs["labels"].to(device)
        pixel_values = inputs["pixel_values"].to(device)
        with autocast(device, self.dtype):
            if inputs["svd"] is None:
                out = self.llava(input_ids=ids, pixel_values=pixel_values, attention_mask=torch.ones_like(ids),
                                 labels=labels)  # fmt: skip
            else:
                embeds = self._embeds_with_svd(ids, inputs["svd"].to(device), inputs["num_svd"])
                out = self.llava(inputs_embeds=embeds, pixel_values=pixel_values,
                                 attention_mask=torch.ones_like(ids), labels=labels)  # fmt: skip
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())


def svd_projector(in_dim: int, llm_dim: int) -> nn.Module:
    """The SVD branch of the released dual projector (C -> 4C -> d, GELU, GELU) and a final Linear(d, d)."""
    return nn.Sequential(nn.Linear(in_dim, 4 * in_dim), nn.GELU(), nn.Linear(4 * in_dim, llm_dim), nn.GELU(),
                         nn.Linear(llm_dim, llm_dim))  # fmt: skip
