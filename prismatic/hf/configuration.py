"""`DyVAConfig`: the transformers config of an hf-auto export (model_type "dyva"), registered with `AutoConfig`.

It carries the framework's resolved model config (`model`, the encoded `ModelConfig` that `prismatic.load` reads from a
run directory's config.json), the SVD frame slots (`num_frames`) and the stage whose weight set the checkpoint is
checked against (`stage`). The same config.json therefore serves `AutoModelForImageTextToText.from_pretrained(OUT)` and
`prismatic.load(OUT)`. Only transformers is imported here, so registering the class stays cheap.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from prismatic.hf.registration import registration_point

DYVA_MODEL_TYPE = "dyva"


class DyVAConfig(PretrainedConfig):
    model_type = DYVA_MODEL_TYPE

    def __init__(
        self, model: dict[str, Any] | None = None, num_frames: int | None = None, stage: str | None = None, **kwargs: Any
    ) -> None:
        """`model`: the encoded framework `ModelConfig` (`prismatic.training.run_setup.encode_config`); `num_frames`:
        the SVD frame slots the model runs with; `stage`: the stage whose trainable set the weights must cover."""
        self.model = dict(model or {})
        self.num_frames = num_frames
        self.stage = stage
        super().__init__(**kwargs)

    def model_config(self) -> Any:
        """The framework `ModelConfig` this config describes (what `prismatic.load` builds from a run directory)."""
        import draccus

        from prismatic.conf.models import ModelConfig

        if not self.model:
            raise ValueError(
                "This DyVAConfig holds no framework model config; export the model with prismatic.hf.export_auto."
            )
        model_cfg = draccus.decode(ModelConfig, self.model)
        if self.num_frames:
            model_cfg.svd_num_frames = int(self.num_frames)
        return model_cfg


# transformers may have been imported by this very module: finish a pending auto-class registration.
registration_point(__name__)
