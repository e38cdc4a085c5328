"""Throughput metrics: the LLM FLOP formula against torch's FlopCounterMode, encoder/projector FLOPs counted by the
meter's hooks, the keys a training step logs, MFU present iff a peak is known or given, and the pretrain wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TINY_RUN_PEAK_FLOPS, TINY_RUN_STEPS, metric_rows
from PIL import Image
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from prismatic.training.throughput import LLMFlops, ThroughputMeter, device_peak_flops, flop_counter


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny kernels on a shared 2-core machine spend most of their time in thread hand-offs with 2 threads (10x slower
    under load); these tests check counts, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama(attn: str) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn)


def counted_flops(model: LlamaForCausalLM, batch: int, tokens: int, llm_trains: bool) -> float:
    model.requires_grad_(llm_trains)
    embeds = torch.randn(batch, tokens, model.config.hidden_size, requires_grad=True)  # as the projector's output
    with flop_counter() as counter:
        model(inputs_embeds=embeds).logits.float().square().mean().backward()
    return float(counter.get_total_flops())


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("llm_trains", [True, False])
def test_llm_formula_matches_the_flop_counter(attn: str, llm_trains: bool) -> None:
    model = tiny_llama(attn)
    batch, tokens = 2, 40
    formula = LLMFlops.from_model(model)
    # GQA: the attention width is heads x head_dim (the query width), not the K/V width.
    assert formula.attention_dim == 64 and formula.num_layers == 3
    expected = batch * formula.train(tokens, trains=llm_trains)
    if attn == "sdpa":
        # Fused attention's backward recomputes QK^T (torch counts it; model FLOPs do not): 2*L*a*T^2 per sequence.
        expected += batch * 2 * formula.num_layers * formula.attention_dim * tokens**2
    counted = counted_flops(model, batch, tokens, llm_trains)
    # Norms, activations, softmax and the loss are not matmuls: neither side counts them, so the match is exact.
    assert counted == pytest.approx(expected, rel=1e-9), (counted, expected)
    assert formula.train(tokens) == pytest.approx(6 * formula.matmul_params * tokens + 12 * 3 * 64 * tokens**2)


def test_peak_table_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert device_peak_flops(torch.device("cpu")) is None
    assert device_peak_flops(torch.device("cpu"), 2e12) == 2e12
    with pytest.raises(ValueError, match="peak_flops"):
        device_peak_flops(torch.device("cpu"), 0.0)
    names = {"NVIDIA H100 80GB HBM3": 989.4e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA A100-SXM4-80GB": 312e12,
             "NVIDIA A800 80GB PCIe": 312e12, "NVIDIA H200": 989.4e12, "NVIDIA L40S": 362e12,
             "NVIDIA GeForce RTX 4090": 165.2e12, "Some Future GPU": None}  # fmt: skip
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, _name=name: _name)
        assert device_peak_flops(torch.device("cuda", 0)) == peak, name


def tiny_step(model_id: str, peak_flops: float | None):
    from prismatic.assembly import build_vlm
    from prismatic.conf.models import get_model_config
    from prismatic.preprocessing.collator import PaddedCollator
    from prismatic.training.options import Precision
    from prismatic.training.strategies import SingleDeviceStrategy
    from prismatic.util.distributed import DistributedContext

    torch.manual_seed(0)
    vlm = build_vlm(model_id, stage="finetune")
    transform = vlm.vision_backbone.get_image_transform()
    ctx = DistributedContext(0, 1, 0, 1, torch.device("cpu"))
    strategy = SingleDeviceStrategy(vlm, ctx, get_model_config(model_id).optimization("finetune"),
                                    Precision(mixed=False), False, 10)  # fmt: skip
    strategy.setup()
    meter = ThroughputMeter(vlm, ctx.device, peak_flops=peak_flops)
    conversation = [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A square."}]
    items = []
    for seed, has_image in ((0, True), (1, True), (2, False)):
        ids, labels = vlm.llm_backbone.tokenize_conversation(conversation)
        image = Image.new("RGB", (40, 40), (seed * 80, 30, 200)) if has_image else None
        items.append({"input_ids": ids, "labels": labels, "pixel_values": transform(image) if image else None})
    batch = PaddedCollator(vlm.llm_backbone.pad_token_id)(items)
    return vlm, strategy, meter, batch


@pytest.mark.parametrize("model_id", ["prism_siglip+tiny", "dyva_siglip+tiny"])
def test_meter_counts_encoder_flops_once_and_logs_every_key(model_id: str) -> None:
    vlm, strategy, meter, batch = tiny_step(model_id, peak_flops=None)
    rows = []
    for step in (1, 2):
        meter.start_step(step)
        strategy.train_step([batch])
        rows.append(meter.finish_step([batch], step_seconds=0.5))
    keys = {"flops_per_sample", "tflops_per_s", "time_share_encoders", "time_share_projector", "time_share_llm",
            "time_share_other"}  # fmt: skip
    assert all(keys <= set(row) and "mfu" not in row for row in rows)  # no peak on CPU: no MFU
    assert rows[0]["flops_per_sample"] == pytest.approx(rows[1]["flops_per_sample"])  # counted once, then reused
    assert all(row["time_share_llm"] > 0 and row["time_share_encoders"] > 0 for row in rows)

    # The hooks' per-row encoder FLOPs equal a direct count of one image through each encoder.
    assert all(c.rows == 2 for c in meter.encoders)  # the two image rows (the text-only row runs no encoder)
    image_rows = batch["pixel_values"]
    for component, encoder in zip(meter.encoders, _encoders(vlm)):
        with torch.no_grad(), flop_counter() as counter:
            encoder({k: v[:1] for k, v in image_rows.items()})
        assert component.forward_flops_per_row == pytest.approx(counter.get_total_flops())
    # The step's FLOPs: LLM formula over the real tokens + encoders once per image + projector x3.
    lengths = [int(n) + vlm.num_visual_tokens * int(h) for n, h in zip(batch["attention_mask"].sum(1),
                                                                          batch["has_image"])]  # fmt: skip
    expected = sum(meter.llm.train(n) for n in lengths)
    expected += sum(c.forward_flops_per_row * 2 for c in meter.encoders)
    expected += 3 * meter.projector.forward_flops_per_row * 2
    assert rows[1]["flops_per_sample"] * 3 == pytest.approx(expected)
    meter.remove()


def _encoders(vlm) -> list:
    backbone = vlm.vision_backbone
    return [backbone.static, backbone.generative] if hasattr(backbone, "static") else [backbone]


def test_mfu_is_present_iff_a_peak_is_given() -> None:
    _, strategy, meter, batch = tiny_step("prism_siglip+tiny", peak_flops=1e12)
    meter.start_step(1)
    strategy.train_step([batch])
    row = meter.finish_step([batch], step_seconds=0.25)
    assert row["mfu"] == pytest.approx(row["tflops_per_s"] * 1e12 / 1e12)
    assert row["tflops_per_s"] == pytest.approx(row["flops_per_sample"] * 3 / 0.25 / 1e12)


def test_pretrain_logs_throughput_keys_and_mfu_with_peak_flops(tiny_run_dir: Path) -> None:
    """The session's shared run was launched with `--peak_flops`: every metrics line carries FLOPs, MFU, time shares."""
    rows = metric_rows(tiny_run_dir)
    assert len(rows) == TINY_RUN_STEPS
    for row in rows:
        assert row["flops_per_sample"] > 0 and 0 <= row["time_share_llm"] <= 1
        assert row["mfu"] == pytest.approx(row["tflops_per_s"] * 1e12 / TINY_RUN_PEAK_FLOPS)
