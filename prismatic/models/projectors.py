"""Projectors: map the vision backbone's token streams into the LLM's embedding space.

An `arch_specifier` such as `no-align+dual` is parsed once into an `ArchSpecifier` (stage prefix + projector kind);
everything downstream uses the typed value. Single-stream projectors (`linear`, `gelu-mlp`, `fused-gelu-mlp`) take the
one stream of a single-stream backbone. `dual` is the released DyVA projector (docs/model.md): per stream
Linear(C, 4C) -> GELU -> Linear(4C, d) -> GELU, the two sequences concatenated in the backbone's stream order (static
first), then ONE shared Linear(d, d). Attribute names match the released checkpoint keys (`projector_base`,
`svd_projector_base`, `final_projection`) so the authors' weights load after stripping torch.compile's `_orig_mod.`.
`dual-independent` gives each stream its own full 3-layer MLP.

`feature_norm=True` (off by default, so released checkpoints load unchanged) puts a LayerNorm on each stream's features
before its MLP, so every stream enters its MLP at unit scale per token whatever its encoder's output scale (random tiny
encoders, trainable ones whose scale drifts); then one learning rate suits both streams. When off, no module and no
state-dict key is added.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn as nn

from prismatic.models.backbones.vision.base_vision import StreamSpec

ProjectorKind = Literal["linear", "gelu-mlp", "fused-gelu-mlp", "dual", "dual-independent"]
PROJECTOR_KINDS: tuple[str, ...] = get_args(ProjectorKind)
DUAL_KINDS: frozenset[str] = frozenset({"dual", "dual-independent"})

# torch.compile wraps modules as `_orig_mod`; the released checkpoints carry that prefix on projector keys.
COMPILED_PREFIX = "_orig_mod."


@dataclass(frozen=True)
class ArchSpecifier:
    """A parsed `arch_specifier`: whether an align stage precedes finetuning, and the projector kind."""

    align: bool
    projector: ProjectorKind

    @classmethod
    def parse(cls, arch_specifier: str) -> ArchSpecifier:
        prefix, sep, kind = arch_specifier.partition("+")
        if sep and prefix in ("align", "no-align") and kind in PROJECTOR_KINDS:
            return cls(align=prefix == "align", projector=kind)  # type: ignore[arg-type]
        valid = [f"{p}+{k}" for p in ("align", "no-align") for k in PROJECTOR_KINDS]
        raise ValueError(f"Unknown arch_specifier {arch_specifier!r}; valid forms are: {', '.join(valid)}.")

    def __str__(self) -> str:
        return f"{'align' if self.align else 'no-align'}+{self.projector}"


def _feature_norm(dim: int, enabled: bool) -> nn.Module:
    """A LayerNorm over a stream's channels, or a parameter-free identity (no state-dict keys) when disabled."""
    return nn.LayerNorm(dim) if enabled else nn.Identity()


def _mlp(dims: list[int], final_act: bool) -> nn.Sequential:
    """Linear layers with exact GELU between them (and after the last one if `final_act`)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(d_in, d_out, bias=True))
        if i < len(dims) - 2 or final_act:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class SingleStreamProjector(nn.Module):
    """`linear`, `gelu-mlp` (2 layers) or `fused-gelu-mlp` (3 layers: C -> 4C -> d -> d) over one stream."""

    def __init__(self, kind: ProjectorKind, stream: StreamSpec, llm_dim: int, feature_norm: bool = False) -> None:
        super().__init__()
        c = stream.embed_dim
        dims = {
            "linear": [c, llm_dim],
            "gelu-mlp": [c, llm_dim, llm_dim],
            "fused-gelu-mlp": [c, 4 * c, llm_dim, llm_dim],
        }
        self.stream = stream.name
        self.norm = _feature_norm(c, feature_norm)
        self.projector = _mlp(dims[kind], final_act=False)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.projector(self.norm(features[self.stream]))


class DualProjector(nn.Module):
    """The released DyVA projector: per-stream two-layer GELU MLPs, concatenation, one shared final Linear(d, d)."""

    def __init__(self, streams: tuple[StreamSpec, StreamSpec], llm_dim: int, feature_norm: bool = False) -> None:
        super().__init__()
        static, generative = streams
        self.stream_names = (static.name, generative.name)
        self.projector_norm = _feature_norm(static.embed_dim, feature_norm)
        self.svd_projector_norm = _feature_norm(generative.embed_dim, feature_norm)
        self.projector_base = _mlp([static.embed_dim, 4 * static.embed_dim, llm_dim], final_act=True)
        self.svd_projector_base = _mlp([generative.embed_dim, 4 * generative.embed_dim, llm_dim], final_act=True)
        self.final_projection = nn.Linear(llm_dim, llm_dim, bias=True)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        static, generative = (features[name] for name in self.stream_names)
        static, generative = self.projector_norm(static), self.svd_projector_norm(generative)
        fused = torch.cat([self.projector_base(static), self.svd_projector_base(generative)], dim=1)
        return self.final_projection(fused)


class IndependentDualProjector(nn.Module):
    """Ablation: a full 3-layer GELU MLP per stream, no shared layer; outputs concatenated in stream order."""

    def __init__(self, streams: tuple[StreamSpec, StreamSpec], llm_dim: int, feature_norm: bool = False) -> None:
        super().__init__()
        self.stream_names = tuple(s.name for s in streams)
        self.norms = nn.ModuleDict({s.name: _feature_norm(s.embed_dim, feature_norm) for s in streams})
        self.projectors = nn.ModuleDict(
            {s.name: _mlp([s.embed_dim, 4 * s.embed_dim, llm_dim, llm_dim], final_act=False) for s in streams}
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.projectors[n](self.norms[n](features[n])) for n in self.stream_names], dim=1)


def build_projector(
    arch: ArchSpecifier, streams: tuple[StreamSpec, ...], llm_dim: int, feature_norm: bool = False
) -> nn.Module:
    """Build the projector `arch` asks for, checking it fits the number of streams the backbone emits;
    `feature_norm` adds a LayerNorm per stream before its MLP."""
    names = [s.name for s in streams]
    if arch.projector in DUAL_KINDS:
        if len(streams) != 2:
            raise ValueError(
                f"Projector {arch.projector!r} needs a dual-stream vision backbone (e.g. `siglip+svd`), "
                f"but this one emits {len(streams)} stream(s) {names}; "
                "use a single-stream projector such as 'fused-gelu-mlp'."
            )
        pair = (streams[0], streams[1])
        dual_cls = DualProjector if arch.projector == "dual" else IndependentDualProjector
        return dual_cls(pair, llm_dim, feature_norm)
    if len(streams) != 1:
        raise ValueError(
            f"Projector {arch.projector!r} takes one stream, but the vision backbone emits {names}; "
            "use 'dual' or 'dual-independent' for dual-stream backbones."
        )
    return SingleStreamProjector(arch.projector, streams[0], llm_dim, feature_norm)


def strip_compiled_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop torch.compile's `_orig_mod.` key prefix (present on the released DyVA projector weights)."""
    return {k.removeprefix(COMPILED_PREFIX): v for k, v in state_dict.items()}
