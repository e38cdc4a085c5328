"""The one vocabulary of training stages, and what each stage means for the model, the optimizer and the data.

A stage names what trains: `align` the projector only (on caption data, with the `align_*` optimisation fields);
`finetune` the projector and the LLM; `full-finetune` everything; `finetune-unet` / `finetune-unet-vae` the finetune set
plus the generative encoder's U-Net (and VAE), at a reduced learning rate. Every stage but `align` reads the finetune
data and the `finetune_*` optimisation fields. The strings are the CLI's and the saved configs' spelling.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    ALIGN = "align"
    FINETUNE = "finetune"
    FULL_FINETUNE = "full-finetune"
    FINETUNE_UNET = "finetune-unet"
    FINETUNE_UNET_VAE = "finetune-unet-vae"

    @property
    def recipe(self) -> Stage:
        """The stage whose data and optimisation fields this one uses: ALIGN for align, FINETUNE for the rest."""
        return Stage.ALIGN if self is Stage.ALIGN else Stage.FINETUNE

    @property
    def generative_parts(self) -> tuple[str, ...]:
        """Parts of the generative encoder (`VisionBackbone.generative_parts()` keys) this stage trains."""
        return {Stage.FINETUNE_UNET: ("unet",), Stage.FINETUNE_UNET_VAE: ("unet", "vae")}.get(self, ())

    @property
    def trains_vision(self) -> bool:
        """Whether any vision encoder weight changes in this stage (its features then cannot be cached)."""
        return self is Stage.FULL_FINETUNE or bool(self.generative_parts)


def parse_stage(value: str | Stage) -> Stage:
    """A Stage from its spelling; a ValueError that lists the valid ones otherwise."""
    try:
        return Stage(value)
    except ValueError:
        raise ValueError(f"Unknown stage {value!r}; valid stages are {[s.value for s in Stage]}.") from None
