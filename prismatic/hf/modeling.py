"""`DyVAForConditionalGeneration`: the framework's VLM as a transformers `PreTrainedModel`, for the auto classes.

The class wraps the framework's own model instead of re-implementing it: `__init__` builds the `PrismaticVLM` through
the one assembly path (`prismatic.assembly.build_vlm`, architecture only; transformers then fills every weight from the
export's model.safetensors) and registers its three parts as its own children, so the parameter names are exactly the
framework's (`vision_backbone.*`, `projector.*`, `llm_backbone.*`) and `prismatic.load(OUT)` reads the same file.
`generate` is the framework's generation path on processor outputs: the VLM encodes and splices the images once
(`splice_prompts`), then the LLM's transformers `generate` decodes with the family's stop tokens. It returns the
prompt ids followed by the new ids, as transformers' VLMs do: `processor.batch_decode(out[:, prompt_len:])` answers.

Pixel inputs travel as `pixel_values_<key>` tensors (e.g. `pixel_values_siglip`, `pixel_values_svd`,
`pixel_values_svd_count`) for the image rows, in batch order, with `has_image` marking those rows (see
`prismatic.hf.processing`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init

from prismatic.hf.configuration import DyVAConfig
from prismatic.hf.registration import registration_point

if TYPE_CHECKING:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from prismatic.models.vlms.prismatic import PrismaticVLM

PIXEL_PREFIX = "pixel_values_"


def split_pixel_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """(the framework's pixel dict or None, the other kwargs) from `pixel_values_<key>` keyword arguments."""
    pixels = {k.removeprefix(PIXEL_PREFIX): v for k, v in kwargs.items() if k.startswith(PIXEL_PREFIX)}
    rest = {k: v for k, v in kwargs.items() if not k.startswith(PIXEL_PREFIX)}
    return pixels or None, rest


class DyVAForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = DyVAConfig
    base_model_prefix = "dyva"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: DyVAConfig, vlm: PrismaticVLM | None = None) -> None:
        """Build the framework VLM `config` describes (architecture only), or wrap `vlm` (an exporter's model)."""
        super().__init__(config)
        if vlm is None:
            from prismatic.assembly import build_vlm

            vlm = build_vlm(config.model_config(), load_weights=False)
            # `from_pretrained(dtype=...)` builds under that default dtype, but the framework builds some parts in
            # fp32 explicitly: cast the whole model, as `vlm.to(dtype=...)` does after `prismatic.load`.
            vlm.to(torch.get_default_dtype())
        self.vision_backbone = vlm.vision_backbone
        self.projector = vlm.projector
        self.llm_backbone = vlm.llm_backbone
        # The VLM object itself is kept unregistered: its modules are the three children above (one set of names).
        object.__setattr__(self, "_vlm", vlm)
        # transformers' generic init would overwrite the framework's weights (seeded encoders, an exporter's trained
        # model); `from_pretrained` fills every weight from the checkpoint anyway.
        with init.no_init_weights():
            self.post_init()
        # transformers gathers tied weights (Qwen's lm_head = embeddings) from direct children only; the LLM sits one
        # level down (`llm_backbone.llm`), so add every nested transformers model's ties under its full name.
        for prefix, module in self.named_modules():
            if module is not self and isinstance(module, PreTrainedModel):
                ties = getattr(module, "all_tied_weights_keys", None) or {}
                self.all_tied_weights_keys.update({f"{prefix}.{k}": f"{prefix}.{v}" for k, v in ties.items()})

    @property
    def vlm(self) -> PrismaticVLM:
        """The framework model (shares every module with this one): `model.vlm.generate(image, prompt)` works too."""
        return self._vlm

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.llm_backbone.llm.get_input_embeddings()

    def _pixels_for(self, pixels: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Pixel tensors on the model's device; float ones in the vision backbone's dtype (as generation does)."""
        if pixels is None:
            return None
        from prismatic.models.vlms.generation import module_dtype

        dtype, device = module_dtype(self.vision_backbone), self.get_input_embeddings().weight.device
        return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in pixels.items()}

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits over the spliced sequence (the processor left-pads; the visual tokens follow each row's first
        token), and the loss with `labels`; see `PrismaticVLM.forward`."""
        pixels, rest = split_pixel_kwargs(kwargs)
        rest.pop("return_dict", None)  # always a ModelOutput
        if rest:
            raise TypeError(f"Unexpected arguments {sorted(rest)}; pass what the DyVA processor returns.")
        return self.vlm(input_ids, attention_mask, self._pixels_for(pixels), labels, has_image, padding_side="left")

    def _generation_config(self, user_config: GenerationConfig | None) -> GenerationConfig:
        from prismatic.models.vlms.generation import GenerationOptions
        from prismatic.models.vlms.generation import generation_config as framework_config

        # The framework's defaults (greedy, 128 new tokens, the family's stop and pad tokens), then the export's
        # generation_config.json, then the caller's config; keyword arguments of `generate` override all of them.
        config = framework_config(self.llm_backbone, GenerationOptions())
        for override in (self.generation_config, user_config):
            if override is not None:
                config.update(**copy.deepcopy(override).to_diff_dict())
        return config

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Prompt ids followed by the generated ids ([B, L + new]); keyword arguments are transformers generation
        options (max_new_tokens, do_sample, temperature, ...)."""
        from prismatic.models.vlms.generation import eval_mode, splice_prompts

        pixels, options = split_pixel_kwargs(kwargs)
        device = self.get_input_embeddings().weight.device
        input_ids = input_ids.to(device)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        if has_image is None:
            has_image = torch.full((input_ids.shape[0],), pixels is not None, dtype=torch.bool)
        config = self._generation_config(generation_config)
        model_kwargs = config.update(**options)  # generation options into the config; the rest go to the LLM
        with eval_mode(self.vlm):
            spliced = splice_prompts(self.vlm, input_ids, attention_mask, self._pixels_for(pixels), has_image.to(device))
            new_tokens = self.llm_backbone.llm.generate(
                inputs_embeds=spliced.inputs_embeds,
                attention_mask=spliced.attention_mask,
                position_ids=spliced.position_ids,
                generation_config=config,
                **model_kwargs,
            )
        return torch.cat([input_ids, new_tokens.to(input_ids.device)], dim=1)


# transformers may have been imported by this very module: finish a pending auto-class registration.
registration_point(__name__)
