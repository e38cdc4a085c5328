"""Selective activation checkpointing (`ModelConfig.gradient_checkpointing_every`, `LLMBackbone.checkpoint_layers`):
it wraps exactly the chosen decoder layers, and on CPU the losses and gradients of several train steps are bitwise
those of no checkpointing and of full checkpointing (transformers' own, the `every=1` path), through a tiny VLM whose
LLM has 5 decoder layers (so one layer in 2 and one in 3 are both proper, different subsets).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from prismatic.models.backbones.llm import registry
from prismatic.util.constants import IGNORE_INDEX

LAYERS = 5


@pytest.fixture(autouse=True)
def five_layer_tiny_llama(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = registry.LLMSpec(None, "llama2", "base", partial(registry.llama2_config, 128, 256, LAYERS, 8), tiny=True)
    monkeypatch.setitem(registry.LLM_BACKBONES, "tiny-llama2", spec)


def _batch(vlm, seed: int) -> dict:
    from prismatic.models.backbones.vision.base_vision import collate_pixel_values

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(vlm.llm_backbone.tokenizer), (2, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    transform = vlm.vision_backbone.get_image_transform()
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "has_image": torch.ones(2, dtype=torch.bool),
            "pixel_values": collate_pixel_values([transform(image) for image in images])}  # fmt: skip


def _run(checkpointing: bool, every: int, steps: int = 3) -> tuple[list[float], list[dict[str, torch.Tensor]], list]:
    from prismatic.assembly import build_vlm
    from prismatic.conf.models import get_model_config
    from prismatic.training.strategies import get_train_strategy
    from prismatic.util.distributed import DistributedContext

    torch.manual_seed(0)
    cfg = get_model_config("prism_siglip+tiny")
    vlm = build_vlm(cfg, stage="finetune")
    assert len(vlm.llm_backbone.decoder_layers()) == LAYERS
    ctx = DistributedContext(0, 1, 0, 1, torch.device("cpu"))
    strategy = get_train_strategy("single", vlm, ctx, cfg.optimization("finetune"), cfg.precision, checkpointing, 10,
                                  checkpoint_every=every)  # fmt: skip
    strategy.setup()
    trainable = [(n, p) for n, p in vlm.named_parameters() if p.requires_grad]
    grads: list[dict[str, torch.Tensor]] = []
    strategy.optimizer.register_step_pre_hook(lambda *_: grads.append({n: p.grad.clone() for n, p in trainable}))
    losses = [strategy.train_step([_batch(vlm, seed)]).loss for seed in range(steps)]
    return losses, grads, strategy.checkpointed_layers


def test_selective_wraps_the_chosen_layers_only() -> None:
    from prismatic.models.backbones.llm.loading import get_llm_backbone_and_tokenizer

    backbone, _ = get_llm_backbone_and_tokenizer("tiny-llama2")
    assert backbone.enable_gradient_checkpointing(every=2) == [0, 2, 4]
    wrapped = [layer for layer in backbone.decoder_layers() if getattr(layer, "_prismatic_checkpointed", False)]
    assert len(wrapped) == 3 and backbone.checkpointed_layers() == [0, 2, 4]
    assert not backbone.llm.model.gradient_checkpointing  # transformers' all-layer switch stays off
    assert backbone.checkpoint_layers([4, 1]) == [0, 1, 2, 4]  # idempotent: layer 4 is not wrapped twice
    other, _ = get_llm_backbone_and_tokenizer("tiny-llama2")
    assert other.enable_gradient_checkpointing(every=3) == [0, 3]
    with pytest.raises(ValueError, match="every"):
        other.enable_gradient_checkpointing(every=0)
    with pytest.raises(ValueError, match="out of range"):
        other.checkpoint_layers([LAYERS])


def test_checkpointed_layers_really_recompute() -> None:
    # Count the wrapped layers' forward calls over one backward: each checkpointed layer runs twice, the others once.
    from prismatic.models.backbones.llm.loading import get_llm_backbone_and_tokenizer

    backbone, _ = get_llm_backbone_and_tokenizer("tiny-llama2")
    backbone.train()
    calls = [0] * LAYERS
    for index, layer in enumerate(backbone.decoder_layers()):
        layer.register_forward_pre_hook(lambda *_, i=index: calls.__setitem__(i, calls[i] + 1))
        layer.mlp.register_forward_pre_hook(lambda *_, i=index: calls.__setitem__(i, calls[i] + 10))
    backbone.enable_gradient_checkpointing(every=2)
    ids = torch.randint(3, 200, (1, 8))
    embeds = backbone.embed_input_ids(ids).detach().requires_grad_(True)
    backbone(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
    # The layer's own pre-hook fires once (outside the checkpoint); its MLP runs again in the recomputation.
    assert calls == [21, 11, 21, 11, 21]


def test_losses_and_gradients_bitwise_equal_to_no_checkpointing() -> None:
    base_losses, base_grads, base_layers = _run(False, 1)
    assert base_layers == [] and len(base_grads) == 3
    for checkpointing, every, expected in ((True, 1, list(range(LAYERS))), (True, 2, [0, 2, 4]), (True, 3, [0, 3])):
        losses, grads, layers = _run(checkpointing, every)
        assert layers == expected
        assert losses == base_losses, (every, losses, base_losses)
        for step, (got, want) in enumerate(zip(grads, base_grads)):
            assert got.keys() == want.keys()
            for name in want:
                assert torch.equal(got[name], want[name]), (every, step, name)
