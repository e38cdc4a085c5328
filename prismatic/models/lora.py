"""LoRA through `peft`: low-rank adapters on the LLM (and, as options, on the static vision encoder's attention and on
a trainable U-Net), so a VLM finetunes with a small fraction of its weights trainable.

Adapters are injected in place (`peft.functional.inject_adapter_in_model`, adapter name "default"), so every module
keeps its class and path: FSDP units, activation checkpointing, generation and the checkpoint names work as for full
fine-tuning; a targeted `nn.Linear` becomes a `peft` LoRA layer holding `base_layer`, `lora_A` and `lora_B`. With LoRA
on, each adapted module ("part") is frozen except its adapters; what else trains still follows the stage (the
projector always does). Exports turn an injected part into a standard `peft` adapter directory or fold it into the
base weights (`to_peft_model` + `save_pretrained` / `merge_and_unload`); `attach_adapter` reads such a directory back.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch.nn as nn

from prismatic.models.stages import Stage

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

    from prismatic.models.vlms.prismatic import PrismaticVLM

ADAPTER_NAME = "default"  # peft's default name: what PeftModel.from_pretrained reads back without being told

LoraPart = Literal["llm", "vision", "unet"]
LORA_PARTS: tuple[LoraPart, ...] = ("llm", "vision", "unet")

# Every attention and MLP projection of the decoder layers (QLoRA's choice, which beats attention-only adapters).
_DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LLM_TARGETS: dict[str, tuple[str, ...]] = {"llama2": _DECODER_PROJECTIONS, "qwen25": _DECODER_PROJECTIONS}
# peft matches a string target as a full regex over module names. timm ViT blocks name their attention projections
# `blocks.<i>.attn.qkv` / `.proj` (a bare "proj" would also catch the patch embedding's convolution); diffusers
# attention (spatial and temporal transformer blocks of the U-Net) `attn1|attn2.to_q|to_k|to_v|to_out.0`.
VISION_TARGETS = r".*blocks\.\d+\.attn\.(qkv|proj)"
UNET_TARGETS = r".*attn\d\.(to_q|to_k|to_v|to_out\.0)"


@dataclass(frozen=True)
class LoraSettings:
    """What the model config's `lora_*` fields ask for (`rank` 0 = LoRA off)."""

    rank: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # LLM modules; None = `DEFAULT_LLM_TARGETS` of its family
    vision: bool = False
    unet: bool = False

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def validate(self) -> None:
        """A ValueError naming the `--model.lora_*` flag to fix."""
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"--model.lora_rank must be an integer >= 0 (0 = LoRA off), got {self.rank!r}.")
        if not self.enabled:
            if self.vision or self.unet:
                raise ValueError("--model.lora_vision / --model.lora_unet need LoRA on: set --model.lora_rank > 0.")
            return
        if self.alpha <= 0:
            raise ValueError(f"--model.lora_alpha must be > 0, got {self.alpha!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--model.lora_dropout must lie in [0, 1), got {self.dropout!r}.")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("--model.lora_target_modules is empty: name modules (e.g. '[q_proj, v_proj]') or null.")

    def parts(self) -> tuple[LoraPart, ...]:
        """The parts these settings adapt (none when LoRA is off)."""
        if not self.enabled:
            return ()
        return ("llm", *(("vision",) if self.vision else ()), *(("unet",) if self.unet else ()))


def part_modules(vlm: PrismaticVLM, parts: Iterable[LoraPart]) -> dict[LoraPart, nn.Module]:
    """The module each part injects its adapter into: the HF causal LM, the static (timm) encoder, the U-Net."""
    modules: dict[LoraPart, nn.Module] = {}
    for part in parts:
        if part == "llm":
            modules[part] = vlm.llm_backbone.llm
        elif part == "vision":
            modules[part] = _static_encoder(vlm)
        else:
            unet = vlm.vision_backbone.generative_parts().get("unet")
            if unet is None:
                raise ValueError(
                    f"--model.lora_unet adapts the generative encoder's U-Net, and {vlm.vision_backbone.identifier!r} "
                    "has none; use a backbone with an SVD stream (e.g. 'siglip+svd') or drop the flag."
                )
            modules[part] = unet
    return modules


def _static_encoder(vlm: PrismaticVLM) -> nn.Module:
    from prismatic.models.backbones.vision.dual import DualStreamBackbone
    from prismatic.models.backbones.vision.timm_vit import DinoSigLIPBackbone, TimmViTBackbone

    backbone = vlm.vision_backbone
    static = backbone.static if isinstance(backbone, DualStreamBackbone) else backbone
    if not isinstance(static, TimmViTBackbone | DinoSigLIPBackbone):
        raise ValueError(
            f"--model.lora_vision adapts the static (timm) encoder's attention, and {backbone.identifier!r} has "
            "none; drop the flag."
        )
    return static


def lora_config(part: LoraPart, settings: LoraSettings, llm_family: str) -> LoraConfig:
    """peft's LoraConfig for one part (`llm_family` picks the LLM's default targets)."""
    from peft import LoraConfig

    if part == "llm":
        targets: list[str] | str = list(settings.target_modules or _family_targets(llm_family))
    else:
        targets = VISION_TARGETS if part == "vision" else UNET_TARGETS
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=targets, bias="none")  # fmt: skip


def _family_targets(family: str) -> tuple[str, ...]:
    if family not in DEFAULT_LLM_TARGETS:
        raise ValueError(
            f"No default LoRA targets for the LLM family {family!r}; name them with --model.lora_target_modules "
            "(e.g. '[q_proj, k_proj, v_proj, o_proj]')."
        )
    return DEFAULT_LLM_TARGETS[family]


def apply_lora(vlm: PrismaticVLM, settings: LoraSettings) -> None:
    """Inject fresh adapters (lora_B = 0, so the model computes what it did) into every part the settings name."""
    from peft.functional import inject_adapter_in_model

    settings.validate()
    for part, module in part_modules(vlm, settings.parts()).items():
        inject_adapter_in_model(lora_config(part, settings, vlm.llm_backbone.spec.family), module, ADAPTER_NAME)


def mark_trainable(vlm: PrismaticVLM, settings: LoraSettings, stage: Stage) -> None:
    """After `freeze_backbones(stage)`: each adapted part trains its adapters only, its base weights frozen."""
    from peft.functional import set_requires_grad

    if settings.enabled and stage is Stage.ALIGN:
        raise ValueError(
            "LoRA adapts the LLM, which the align stage keeps frozen (it trains the projector only): train LoRA in a "
            "finetune stage, or set --model.lora_rank 0."
        )
    if settings.unet and "unet" not in stage.generative_parts:
        raise ValueError(
            f"--model.lora_unet adapts a U-Net that trains, and stage {stage.value!r} keeps it frozen: use "
            "--stage finetune-unet (or a U-Net model type), or drop the flag."
        )
    for module in part_modules(vlm, settings.parts()).values():
        module.requires_grad_(False)
        set_requires_grad(module, ADAPTER_NAME, requires_grad=True)


@contextmanager
def _rewrapping() -> Iterator[None]:
    # peft warns that a model already holding adapters is being wrapped "for a second time": here that is the intent
    # (the PeftModel wraps the very adapters training injected, whose weights are put back right after).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are trying to modify a model with PEFT for a second time")
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute in the model")
        yield


def to_peft_model(module: nn.Module, config: LoraConfig) -> PeftModel:
    """A `PeftModel` around a module that holds injected adapters, with their trained weights (wrapping makes peft
    re-create the adapter, so its weights are read before and written back after). The module stays in place."""
    from peft import get_peft_model
    from peft.functional import get_peft_model_state_dict, set_peft_model_state_dict

    trained = {name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(module).items()}
    with _rewrapping():
        peft_model = get_peft_model(module, config, adapter_name=ADAPTER_NAME)
    result = set_peft_model_state_dict(module, trained, adapter_name=ADAPTER_NAME)
    if result.unexpected_keys:
        raise RuntimeError(f"Adapter tensors found no LoRA layer after wrapping: {result.unexpected_keys[:5]}")
    return peft_model


def attach_adapter(module: nn.Module, adapter_dir: Path) -> None:
    """Inject the adapter a `peft` adapter directory holds into `module` (in place; frozen, for inference)."""
    from peft import PeftModel

    PeftModel.from_pretrained(module, str(adapter_dir), adapter_name=ADAPTER_NAME, is_trainable=False)
