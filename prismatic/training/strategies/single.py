"""One process, one device: no wrapper. Used by plain `python scripts/pretrain.py` and as the reference that the
distributed strategies are tested against."""

from __future__ import annotations

import torch.nn as nn

from prismatic.training.strategies.base import TrainingStrategy


class SingleDeviceStrategy(TrainingStrategy):
    def wrap_model(self) -> nn.Module:
        return self.vlm.to(self.ctx.device)
