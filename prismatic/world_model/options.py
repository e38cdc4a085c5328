"""The world-model training's option types, in a module that imports nothing heavy, so the script's config (and its
`--help`) can name them without loading diffusers (as `prismatic/training/options.py` does for VLM training)."""

from typing import Literal

LatentChoice = Literal["sample", "mode"]  # clean latents: a VAE posterior sample (SVD's training) or its mode
CondAugChoice = Literal["log-normal", "fixed"]  # first-frame noise augmentation: drawn per sample, or one value
WorldModelStrategy = Literal["single", "ddp", "fsdp"]
