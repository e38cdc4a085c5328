"""PrismaticVLM: vision backbone -> projector -> visual tokens spliced into the LLM's input (docs/model.md).

The model knows nothing about parallelism or precision policies (those are applied around it by the training
strategies). It owns three things: which parameters train in a given stage, how images become visual tokens, and how
those tokens are placed in the prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from prismatic.models.backbones.llm.base_llm import LLMBackbone
from prismatic.models.backbones.vision.base_vision import PixelValues, VisionBackbone
from prismatic.models.losses import DEFAULT_CHUNK_ROWS, LossKernel
from prismatic.models.projectors import ArchSpecifier, build_projector
from prismatic.models.stages import Stage, parse_stage
from prismatic.models.vlms.generation import SampleImages
from prismatic.models.vlms.generation import generate as generate_text
from prismatic.models.vlms.splice import PaddingSide, next_token_targets, splice_visual_tokens
from prismatic.models.vlms.visual_features import EncoderBatching, vision_features
from prismatic.util.constants import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers.modeling_outputs import CausalLMOutputWithPast


def freeze_vision_backbone(vision_backbone: VisionBackbone, stage: Stage | str) -> None:
    """The vision half of `PrismaticVLM.freeze_backbones` (also used alone when only the encoders are built, e.g. for
    the feature cache): frozen except in full-finetune, its always-trainable modules, and the generative encoder's
    parts the stage trains."""
    stage = parse_stage(stage)
    vision_backbone.requires_grad_(stage is Stage.FULL_FINETUNE)
    for name in vision_backbone.trainable_module_names:
        vision_backbone.get_submodule(name).requires_grad_(True)
    parts = vision_backbone.generative_parts()
    for name in stage.generative_parts:
        if name not in parts:
            raise ValueError(
                f"Stage {stage.value!r} trains the generative encoder's {name!r}, but vision backbone "
                f"{vision_backbone.identifier!r} has none; use a backbone with an SVD stream (e.g. 'siglip+svd')."
            )
        parts[name].requires_grad_(True)


class PrismaticVLM(nn.Module):
    def __init__(
        self,
        model_id: str,
        vision_backbone: VisionBackbone,
        llm_backbone: LLMBackbone,
        arch_specifier: str | ArchSpecifier,
        projector_feature_norm: bool = False,
        encoder_batching: EncoderBatching = "per-sample",
    ) -> None:
        """`projector_feature_norm` puts a LayerNorm on each visual stream before its projector MLP (off for the
        released models; see `prismatic.models.projectors`). `encoder_batching` says how frozen encoders batch their
        work (see `visual_features`): "per-sample" makes features independent of the batch (what the cache needs)."""
        super().__init__()
        self.model_id = model_id
        self.encoder_batching = encoder_batching
        self.arch = arch_specifier if isinstance(arch_specifier, ArchSpecifier) else ArchSpecifier.parse(arch_specifier)
        self.vision_backbone = vision_backbone
        self.llm_backbone = llm_backbone
        self.projector_feature_norm = projector_feature_norm
        self.projector = build_projector(
            self.arch, vision_backbone.streams, llm_backbone.embed_dim, feature_norm=projector_feature_norm
        )

    # === Introspection ===
    @property
    def arch_specifier(self) -> str:
        return str(self.arch)

    @property
    def num_visual_tokens(self) -> int:
        return self.vision_backbone.num_visual_tokens

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (works on the `meta` device)."""
        parts = {"vision_backbone": self.vision_backbone, "projector": self.projector, "llm_backbone": self.llm_backbone}
        return {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}

    def get_prompt_builder(self, system_prompt: str | None = None):
        return self.llm_backbone.get_prompt_builder(system_prompt=system_prompt)

    # === Freezing ===
    def freeze_backbones(self, stage: Stage | str) -> None:
        """Set `requires_grad` for a training stage.

        align: projector only. finetune: projector + LLM. full-finetune: everything. finetune-unet(-vae): finetune plus
        the generative encoder's U-Net (and VAE); its unused parts must hold no trainable parameter, which the encoder
        guarantees by never building them (see the SVD encoder).
        """
        stage = parse_stage(stage)
        freeze_vision_backbone(self.vision_backbone, stage)
        self.llm_backbone.requires_grad_(stage is not Stage.ALIGN)
        self.projector.requires_grad_(True)

    # === Forward ===
    def encode_images(self, pixel_values: PixelValues) -> torch.Tensor:
        """Vision streams + projector -> [n_images, Nv, d]. Streams come from cached `features:<stream>` entries where
        the batch has them and from the encoders otherwise (`visual_features`); gradients reach an encoder only if it
        trains."""
        frozen = not any(p.requires_grad for p in self.vision_backbone.parameters())
        per_sample = frozen and self.encoder_batching == "per-sample"
        features = vision_features(self.vision_backbone, pixel_values, frozen=frozen, per_sample=per_sample)
        dtype = next(self.projector.parameters()).dtype
        return self.projector({k: v.to(dtype) for k, v in features.items()})

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: PixelValues | None = None,
        labels: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        padding_side: PaddingSide = "right",
        label_logits_only: bool = False,
        label_loss: LossKernel | None = None,
        loss_chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ) -> CausalLMOutputWithPast:
        """`pixel_values` holds the image rows only, in batch order; `has_image` [B] marks them (default: all rows).

        `label_logits_only` (with `labels`; what training uses) computes logits only at the positions that predict a
        label: `output.logits` is [n_label_tokens, vocab] in row-major order of the spliced sequence (targets:
        `next_token_targets(spliced labels)` at the same positions), and no loss is computed. With it, `label_loss`
        (a resolved `prismatic.models.losses.LossKernel`) returns instead `output.loss`, the SUM of the cross-entropies
        at those positions, computed from the final hidden states by that kernel (no logits returned)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_embeds = self.llm_backbone.embed_input_ids(input_ids)
        if pixel_values is None:
            has_image = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            visual = None
        else:
            if has_image is None:
                has_image = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            visual = self.encode_images(pixel_values) if bool(has_image.any()) else None
        spliced = splice_visual_tokens(text_embeds, attention_mask, visual, has_image, labels, padding_side)
        if label_logits_only:
            if spliced.labels is None:
                raise ValueError("label_logits_only=True needs labels (it keeps the logits that predict them).")
            targets = next_token_targets(spliced.labels)
            keep = targets != IGNORE_INDEX
            if label_loss is not None:
                return self.llm_backbone(spliced.inputs_embeds, spliced.attention_mask,
                                         position_ids=spliced.position_ids, logits_mask=keep,
                                         loss_targets=targets[keep], loss_kernel=label_loss,
                                         loss_chunk_rows=loss_chunk_rows)  # fmt: skip
            return self.llm_backbone(spliced.inputs_embeds, spliced.attention_mask, position_ids=spliced.position_ids,
                                     logits_mask=keep)  # fmt: skip
        return self.llm_backbone(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            position_ids=spliced.position_ids,
            labels=spliced.labels,
        )

    # === Generation ===
    def generate(
        self, images: SampleImages | list[SampleImages], prompt: str | list[str], **options: Any
    ) -> str | list[str]:
        """Answer a prompt about an image (see `prismatic.models.vlms.generation`).

        `images`: a PIL image, a list of PIL images (the frames of one sample, for the SVD slots; static encoders see
        frame 1), or None; with a list of prompts, a list holding one such entry per prompt. `prompt`: the text of
        `get_prompt_builder()...get_prompt()`, or a list of them (a batch). Returns a str, or a list of str for a
        list of prompts. Options: do_sample (False = greedy), temperature, top_p, top_k, max_new_tokens (128),
        min_length (new tokens before a stop token is allowed), seed (reproducible sampling, global RNG untouched),
        synced_gpus (every rank steps until all are done: a model sharded over the ranks of a job).
        Runs in eval mode without gradients and restores the previous mode.
        """
        return generate_text(self, images, prompt, **options)
