"""Compiled decoder layers (`ModelConfig.compile_llm_blocks`, `LLMBackbone.compile_decoder_layers`): the strategy
compiles every LLM decoder layer in place before wrapping, parameter names stay those of the eager model (checkpoints
and optimizer state load either way), and on CPU (backend aot_eager: dynamo and AOTAutograd trace the graphs Inductor
gets on a GPU) several train steps give eager's losses and gradients, with no, full and selective checkpointing.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN_PEAK_FLOPS, TINY_RUN_STEPS, losses, run_pretrain, small_run_args
from test_selective_ac import _batch


def _run(compile_blocks: bool, checkpointing: bool, every: int, steps: int = 3):
    from prismatic.assembly import build_vlm
    from prismatic.conf.models import get_model_config
    from prismatic.training.strategies import get_train_strategy
    from prismatic.util.distributed import DistributedContext

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = get_model_config("prism_siglip+tiny")
    vlm = build_vlm(cfg, stage="finetune")
    ctx = DistributedContext(0, 1, 0, 1, torch.device("cpu"))
    strategy = get_train_strategy("single", vlm, ctx, cfg.optimization("finetune"), cfg.precision, checkpointing, 10,
                                  checkpoint_every=every, compile_blocks=compile_blocks)  # fmt: skip
    strategy.setup()
    trainable = [(n, p) for n, p in vlm.named_parameters() if p.requires_grad]
    grads: list[dict[str, torch.Tensor]] = []
    strategy.optimizer.register_step_pre_hook(lambda *_: grads.append({n: p.grad.clone() for n, p in trainable}))
    losses = [strategy.train_step([_batch(vlm, seed)]).loss for seed in range(steps)]
    return vlm, losses, grads


@pytest.mark.parametrize(("checkpointing", "every"), [(False, 1), (True, 1), (True, 2)])
def test_compiled_layers_train_like_eager(checkpointing: bool, every: int) -> None:
    eager_vlm, eager_losses, eager_grads = _run(False, checkpointing, every)
    vlm, losses, grads = _run(True, checkpointing, every)
    layers = vlm.llm_backbone.decoder_layers()
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert all(layer._compiled_call_impl is None for layer in eager_vlm.llm_backbone.decoder_layers())
    # In place: no `_orig_mod.` prefix, so a compiled run's checkpoint is an eager run's and the other way round.
    assert list(vlm.state_dict()) == list(eager_vlm.state_dict())
    assert losses == pytest.approx(eager_losses, rel=1e-6, abs=1e-7)
    assert len(grads) == len(eager_grads) == 3
    for step, (got, want) in enumerate(zip(grads, eager_grads)):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=f"step {step + 1}: {name}")


def test_compiled_layers_give_eager_logits_outside_training() -> None:
    """In eval mode without gradients (evaluation's forward; checkpointing inactive) the compiled layers, recompiled
    for that grad mode, give eager's logits."""
    eager_vlm, _, _ = _run(False, True, 2, steps=1)
    vlm, _, _ = _run(True, True, 2, steps=1)
    vlm.load_state_dict(eager_vlm.state_dict())
    batch = _batch(vlm, 7)
    with torch.no_grad():
        want = eager_vlm.eval()(**batch).logits
        got = vlm.eval()(**batch).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_pretrain_flag_compiles_and_trains_like_the_eager_run(tiny_data_root: Path, tiny_run_dir: Path,
                                                              tmp_path: Path) -> None:  # fmt: skip
    """`--model.compile_llm_blocks true` through scripts/pretrain.py: the shared tiny run's flags plus this one give
    its losses (the tiny DyVA run checkpoints every decoder layer, transformers' own path)."""
    args = small_run_args(tiny_data_root, tmp_path, "compiled", TINY_RUN_STEPS, "--peak_flops", str(TINY_RUN_PEAK_FLOPS),
                          "--model.compile_llm_blocks", "true")  # fmt: skip
    result = run_pretrain(args)
    assert "compiled decoder layers True" in result.stdout + result.stderr
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tiny_run_dir), rel=1e-6)
