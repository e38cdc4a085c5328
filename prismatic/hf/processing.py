"""`DyVAProcessor`: prompts and images to the inputs of `DyVAForConditionalGeneration`, registered with `AutoProcessor`.

It is the framework's input side, unchanged: prompts are tokenized as `generate` tokenizes them (one string each, with
the tokenizer's special tokens, left-padded), images go through the vision backbone's own per-sample transform (built
from the model config on the `meta` device, so no weights are read) and `collate_pixel_values`. A row's images are a
PIL image, a list of PIL images (frames for the SVD slots; the static encoder sees the first) or None (text only), as
in `PrismaticVLM.generate`. The chat template reproduces the framework's prompt format (`prismatic.hf.chat_template`);
the visual tokens need no placeholder, the model splices them after each prompt's first token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import BatchFeature, ProcessorMixin

from prismatic.hf.configuration import DyVAConfig
from prismatic.hf.modeling import PIXEL_PREFIX
from prismatic.hf.registration import registration_point

if TYPE_CHECKING:
    from prismatic.models.backbones.vision.base_vision import ImageTransform


class DyVAProcessor(ProcessorMixin):
    def __init__(
        self,
        tokenizer: Any = None,
        model_config: dict[str, Any] | None = None,
        num_frames: int | None = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        """`model_config` / `num_frames`: as in `DyVAConfig` (they decide the image transform)."""
        self.model_config = dict(model_config or {})
        self.num_frames = num_frames
        super().__init__(tokenizer, chat_template=chat_template, **kwargs)

    def image_transform(self) -> ImageTransform:
        """The vision backbone's per-sample transform (PIL image or frames -> pixel dict), built on first use."""
        if getattr(self, "_transform", None) is None:
            self._transform = self._build_image_transform()
        return self._transform

    def _build_image_transform(self) -> ImageTransform:
        from prismatic.models.materialize import get_vision_backbone_and_transform

        model_cfg = DyVAConfig(model=self.model_config, num_frames=self.num_frames).model_config()
        with torch.device("meta"):  # the transform only: the backbone is built without weights and dropped
            _, transform = get_vision_backbone_and_transform(
                model_cfg.vision_backbone_id,
                model_cfg.image_resize_strategy,
                num_frames=model_cfg.svd_num_frames,
                svd_config=model_cfg.svd_encoder_config(),
                load_weights=False,
                video_config=model_cfg.video_encoder_config(),
            )
        return transform

    def __call__(
        self, images: Any = None, text: str | list[str] | None = None, return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """`text`: a prompt (e.g. from `apply_chat_template`) or a list of them; `images`: that prompt's image(s), or
        one entry per prompt. Returns input_ids, attention_mask, has_image and the `pixel_values_<key>` tensors."""
        from prismatic.models.backbones.vision.base_vision import collate_pixel_values
        from prismatic.models.vlms.generation import normalize_inputs
        from prismatic.models.vlms.splice import pad_rows

        if return_tensors not in (None, "pt"):
            raise ValueError(f"The DyVA processor returns PyTorch tensors only; got return_tensors={return_tensors!r}.")
        if text is None:
            raise ValueError("Pass text=...: the prompt (processor.apply_chat_template(messages)) or a list of prompts.")
        rows, prompts = normalize_inputs(images, text)
        ids = [list(self.tokenizer(prompt, add_special_tokens=True).input_ids) for prompt in prompts]
        if not all(ids):
            raise ValueError("A prompt tokenizes to nothing; build prompts with processor.apply_chat_template(...).")
        data: dict[str, torch.Tensor] = {
            "input_ids": pad_rows(ids, int(self.tokenizer.pad_token_id), "left"),
            "attention_mask": pad_rows([[1] * len(row) for row in ids], 0, "left"),
            "has_image": torch.tensor([row is not None for row in rows], dtype=torch.bool),
        }
        image_rows = [row for row in rows if row is not None]
        if image_rows:
            transform = self.image_transform()
            pixels = collate_pixel_values([transform(row) for row in image_rows])
            data |= {f"{PIXEL_PREFIX}{key}": value for key, value in pixels.items()}
        return BatchFeature(data=data)


# transformers may have been imported by this very module: finish a pending auto-class registration.
registration_point(__name__)
