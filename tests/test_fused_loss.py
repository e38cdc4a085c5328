"""The fused linear + cross-entropy over label positions (`prismatic.models.losses`, `ModelConfig.loss_kernel`) is the
plain loss: the chunked kernel's loss and gradients (w.r.t. the hidden states, the LM head's weight and bias) equal
`F.cross_entropy` over full logits to float tolerance in fp32, with ignored rows and chunk sizes that do not divide the
rows; through a tiny VLM, the loss computed inside the forward (its own label mask and shift) equals the strategy's
plain loss (labels re-spliced and shifted outside the model), and whole train steps give the same losses and
gradients. `liger` falls back to `plain` where it cannot run.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from prismatic.models.losses import chunked_linear_cross_entropy, liger_available, resolve_loss_kernel
from prismatic.util.constants import IGNORE_INDEX

ROWS, DIM, VOCAB = 13, 6, 17


def _inputs(seed: int = 0, bias: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(ROWS, DIM, generator=g, dtype=torch.float64).float().requires_grad_(True)
    weight = torch.randn(VOCAB, DIM, generator=g).requires_grad_(True)
    head_bias = torch.randn(VOCAB, generator=g).requires_grad_(True) if bias else None
    targets = torch.randint(0, VOCAB, (ROWS,), generator=g)
    targets[[0, 5, 6, 12]] = IGNORE_INDEX  # ignored rows at both ends and in the middle
    return hidden, weight, head_bias, targets


def _grads(loss: torch.Tensor, tensors: list[torch.Tensor | None]) -> list[torch.Tensor]:
    present = [t for t in tensors if t is not None]
    return list(torch.autograd.grad(loss, present))


@pytest.mark.parametrize("chunk_rows", [1, 4, 5, ROWS, 64])  # 4 and 5 do not divide 13 rows
@pytest.mark.parametrize("bias", [True, False])
def test_chunked_equals_plain_loss_and_gradients(chunk_rows: int, bias: bool) -> None:
    hidden, weight, head_bias, targets = _inputs(bias=bias)
    plain = F.cross_entropy(F.linear(hidden, weight, head_bias).float(), targets, reduction="sum")
    chunked = chunked_linear_cross_entropy(hidden, weight, head_bias, targets, chunk_rows)
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-5)
    scale = 0.37  # the strategy backpropagates loss * (world size / global label tokens)
    for got, want in zip(_grads(chunked * scale, [hidden, weight, head_bias]),
                         _grads(plain * scale, [hidden, weight, head_bias])):  # fmt: skip
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Ignored rows get exactly zero gradient (not merely a small one).
    grad_hidden = _grads(chunked_linear_cross_entropy(hidden, weight, head_bias, targets, chunk_rows), [hidden])[0]
    assert torch.equal(grad_hidden[targets == IGNORE_INDEX], torch.zeros_like(grad_hidden[targets == IGNORE_INDEX]))


def test_chunked_sees_every_row_and_every_target() -> None:
    # A kernel that dropped a chunk, or took another row's target, would be off by far more than rounding.
    hidden, weight, head_bias, targets = _inputs(seed=1)
    full = chunked_linear_cross_entropy(hidden, weight, head_bias, targets, 4)
    shifted = F.cross_entropy(F.linear(hidden, weight, head_bias), targets.roll(1), reduction="sum")
    assert not torch.allclose(full, shifted, rtol=1e-3)
    without_last = F.cross_entropy(F.linear(hidden[:-2], weight, head_bias), targets[:-2], reduction="sum")
    assert not torch.allclose(full, without_last, rtol=1e-3)


def test_frozen_head_gets_no_gradient_and_hidden_still_does() -> None:
    hidden, weight, head_bias, targets = _inputs(seed=2)
    weight.requires_grad_(False)
    head_bias.requires_grad_(False)
    loss = chunked_linear_cross_entropy(hidden, weight, head_bias, targets, 3)
    (grad,) = torch.autograd.grad(loss, [hidden])
    plain = F.cross_entropy(F.linear(hidden, weight, head_bias), targets, reduction="sum")
    torch.testing.assert_close(grad, torch.autograd.grad(plain, [hidden])[0], rtol=1e-5, atol=1e-6)


def test_bad_arguments_say_what_to_do() -> None:
    hidden, weight, head_bias, targets = _inputs()
    with pytest.raises(ValueError, match="chunk_rows"):
        chunked_linear_cross_entropy(hidden, weight, head_bias, targets, 0)
    with pytest.raises(ValueError, match="choose one of"):
        resolve_loss_kernel("fused", torch.device("cpu"))  # type: ignore[arg-type]


def test_liger_falls_back_to_plain_where_it_cannot_run() -> None:
    # liger-kernel is a GPU extra: on this CPU machine the request resolves to the plain path, with a warning.
    assert resolve_loss_kernel("liger", torch.device("cpu")) == "plain"
    assert resolve_loss_kernel("chunked", torch.device("cpu")) == "chunked"
    if not liger_available():
        assert resolve_loss_kernel("liger", torch.device("cuda")) == "plain"


# === Through a tiny VLM ===
def _tiny_vlm(llm_id: str = "tiny-llama2"):
    from prismatic.assembly import build_vlm
    from prismatic.conf.models import get_model_config

    torch.manual_seed(0)
    cfg = get_model_config("prism_siglip+tiny")
    cfg.llm_backbone_id = llm_id
    return build_vlm(cfg, stage="finetune")


def _batch(vlm, seed: int = 0) -> dict:
    """3 rows: two with an image (one right-padded), one text-only; labels on the second half of each text."""
    from prismatic.models.backbones.vision.base_vision import collate_pixel_values

    g = torch.Generator().manual_seed(seed)
    length = 12
    ids = torch.randint(3, len(vlm.llm_backbone.tokenizer), (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    rng = np.random.default_rng(seed)
    transform = vlm.vision_backbone.get_image_transform()
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "has_image": torch.tensor([True, True, False]),
            "pixel_values": collate_pixel_values([transform(image) for image in images])}  # fmt: skip


def test_model_loss_equals_the_strategy_plain_loss() -> None:
    from prismatic.training.batching import label_targets, spliced_labels

    vlm = _tiny_vlm()
    batch = _batch(vlm)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels", "has_image")}
    logits = vlm(**inputs, label_logits_only=True).logits
    labels = spliced_labels(batch["labels"], batch["attention_mask"], batch["has_image"], vlm.num_visual_tokens)
    plain = F.cross_entropy(logits.float(), label_targets(labels), reduction="sum")
    # An independent reference for the mask and the shift: transformers' own loss over the full logits (the mean
    # over the spliced labels it shifts itself), times the number of label tokens.
    reference = vlm(**inputs).loss * int((labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(plain, reference, rtol=1e-5, atol=1e-4)
    for kernel in ("chunked", "plain"):
        fused = vlm(**inputs, label_logits_only=True, label_loss=kernel, loss_chunk_rows=5).loss
        torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-4)


def _strategy(kernel: str, llm_id: str):
    from prismatic.conf.models import get_model_config
    from prismatic.training.strategies import get_train_strategy
    from prismatic.util.distributed import DistributedContext

    vlm = _tiny_vlm(llm_id)
    cfg = get_model_config("prism_siglip+tiny")
    ctx = DistributedContext(0, 1, 0, 1, torch.device("cpu"))
    strategy = get_train_strategy("single", vlm, ctx, cfg.optimization("finetune"), cfg.precision, False, 10,
                                  loss_kernel=kernel, loss_chunk_rows=5)  # fmt: skip
    strategy.setup()
    for group in strategy.optimizer.param_groups:
        group["eps"] = 1e-2  # Adam's first update ~ lr * sign(g): keep rounding on tiny gradients from flipping it
    return strategy


@pytest.mark.parametrize("llm_id", ["tiny-llama2", "tiny-qwen25"])  # separate LM head; head tied to the embeddings
def test_train_steps_match_plain(llm_id: str) -> None:
    runs = {}
    for kernel in ("plain", "chunked"):
        strategy = _strategy(kernel, llm_id)
        assert strategy.loss_kernel == kernel
        trainable = [(n, p) for n, p in strategy.vlm.named_parameters() if p.requires_grad]
        captured: list[dict[str, torch.Tensor]] = []
        strategy.optimizer.register_step_pre_hook(
            lambda *_, t=trainable, c=captured: c.append({n: p.grad.clone() for n, p in t})
        )
        results = [strategy.train_step([_batch(strategy.vlm, seed)]) for seed in (0, 1)]
        runs[kernel] = (results, captured)
    (plain_results, plain_grads), (fused_results, fused_grads) = runs["plain"], runs["chunked"]
    for plain, fused in zip(plain_results, fused_results):
        assert plain.label_tokens == fused.label_tokens
        assert abs(plain.loss - fused.loss) < 1e-5 * max(1.0, abs(plain.loss))
        assert abs(plain.grad_norm - fused.grad_norm) < 1e-5 * max(1.0, plain.grad_norm)
    assert len(plain_grads) == len(fused_grads) == 2
    for step_plain, step_fused in zip(plain_grads, fused_grads):
        assert step_plain.keys() == step_fused.keys()
        # The head's gradient is part of the comparison (tied heads: through the embedding matrix).
        assert any(("lm_head" if llm_id == "tiny-llama2" else "embed_tokens") in name for name in step_plain)
        for name in step_plain:
            torch.testing.assert_close(step_fused[name], step_plain[name], rtol=1e-4, atol=1e-6, msg=name)
