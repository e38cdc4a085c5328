"""LoRA (`--model.lora_rank`, prismatic/models/lora.py): what trains, that a LoRA run learns and its adapters move,
that merged and unmerged adapters compute the same logits, that `load` reads a LoRA run, that resume is bit-exact and
2-process FSDP2 equals one process, and that LoRA composes with activation checkpointing, mixed precision and gradient
accumulation. One tiny LoRA run (`lora_run`, 6 steps through scripts/pretrain.py) serves most tests.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import losses, run_pretrain, small_run_args
from safetensors.torch import load_file

from prismatic import load
from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.models.lora import DEFAULT_LLM_TARGETS, lora_config, part_modules, to_peft_model

REPO = Path(__file__).resolve().parents[1]
LORA_FLAGS = ("--model.lora_rank", "8", "--model.lora_alpha", "16", "--model.finetune_learning_rate", "3e-3")


def _lora_cfg(model_type: str = "dyva_siglip+tiny", **fields: object):
    cfg = get_model_config(model_type)
    cfg.lora_rank, cfg.lora_alpha = 4, 8
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def _trainable(vlm) -> list[str]:
    return [name for name, param in vlm.named_parameters() if param.requires_grad]


@pytest.mark.parametrize("model_type", ["dyva_siglip+tiny", "dyva_siglip_qwen+tiny"])
def test_only_lora_and_projector_parameters_require_grad(model_type: str) -> None:
    vlm = build_vlm(_lora_cfg(model_type), stage="finetune")
    trainable = _trainable(vlm)
    lora = [n for n in trainable if n.startswith("llm_backbone.")]
    assert lora and all(".lora_A.default." in n or ".lora_B.default." in n for n in lora)
    assert all(n.startswith(("projector.", "llm_backbone.")) for n in trainable)
    assert {n for n, _ in vlm.projector.named_parameters(prefix="projector")} <= set(trainable)
    # Every default target of every decoder layer is adapted (A and B), and nothing else in the LLM trains.
    layers = vlm.llm_backbone.llm.config.num_hidden_layers
    assert len(lora) == 2 * layers * len(DEFAULT_LLM_TARGETS[vlm.llm_backbone.spec.family])
    full = build_vlm(get_model_config(model_type), stage="finetune")
    assert sum(p.numel() for p in vlm.parameters() if p.requires_grad) < sum(
        p.numel() for p in full.parameters() if p.requires_grad
    )


def test_target_modules_choose_what_is_adapted() -> None:
    vlm = build_vlm(_lora_cfg(lora_target_modules=("q_proj", "v_proj")), stage="finetune")
    adapted = {name.split(".")[-4] for name in _trainable(vlm) if ".lora_" in name}
    assert adapted == {"q_proj", "v_proj"}


def test_vision_and_unet_adapters_train_only_their_adapters() -> None:
    vlm = build_vlm(_lora_cfg(lora_vision=True, lora_unet=True), stage="finetune-unet")
    trainable = _trainable(vlm)
    vision = [n for n in trainable if n.startswith("vision_backbone.")]
    static = [n for n in vision if ".static." in n]
    unet = [n for n in vision if ".unet." in n]
    assert static and unet and len(static) + len(unet) == len(vision)
    assert all(".attn." in n and ".lora_" in n for n in static)
    assert all(".lora_" in n and (".to_q." in n or ".to_k." in n or ".to_v." in n or ".to_out.0." in n) for n in unet)


def test_lora_settings_a_stage_cannot_use_are_refused() -> None:
    with pytest.raises(ValueError, match="align stage keeps frozen"):
        build_vlm(_lora_cfg(), stage="align")
    with pytest.raises(ValueError, match="finetune-unet"):
        build_vlm(_lora_cfg(lora_unet=True), stage="finetune")
    with pytest.raises(ValueError, match="lora_rank must be an integer >= 0"):
        build_vlm(_lora_cfg(lora_rank=-1), stage="finetune")
    with pytest.raises(ValueError, match="has none"):
        build_vlm(_lora_cfg("prism_siglip+tiny", lora_unet=True), stage="finetune-unet")


@pytest.fixture(scope="module")
def lora_run(tiny_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LoRA run of 6 steps (rank 8) through scripts/pretrain.py, one process, fp32."""
    runs = tmp_path_factory.mktemp("lora-runs")
    run_pretrain(small_run_args(tiny_data_root, runs, "lora", 6, *LORA_FLAGS))
    return runs / "lora"


def test_a_lora_run_lowers_the_loss_and_trains_its_adapters(lora_run: Path) -> None:
    curve = losses(lora_run)
    assert len(curve) == 6 and all(math.isfinite(x) for x in curve)
    assert sum(curve[-2:]) / 2 < sum(curve[:2]) / 2 - 0.3, curve
    saved = load_file(lora_run / "model.safetensors")
    lora_b = [v for k, v in saved.items() if ".lora_B.default." in k]
    # B starts at zero: a trained adapter moved it. Nothing but adapters and the projector is exported.
    assert lora_b and all(v.abs().max() > 0 for v in lora_b)
    assert all(k.startswith("projector.") or ".lora_" in k for k in saved)


def test_load_reads_a_lora_run(lora_run: Path) -> None:
    vlm = load(lora_run)
    saved = load_file(lora_run / "model.safetensors")
    own = vlm.state_dict()
    assert all(torch.equal(own[k], v) for k, v in saved.items())
    assert not any(p.requires_grad for p in vlm.parameters()) and not vlm.training


def test_merged_and_unmerged_adapters_give_the_same_logits(lora_run: Path) -> None:
    vlm = load(lora_run)
    llm, settings = vlm.llm_backbone.llm, _settings(lora_run)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unmerged = llm(ids).logits
        peft_model = to_peft_model(part_modules(vlm, ["llm"])["llm"], lora_config("llm", settings, "llama2"))
        with peft_model.disable_adapter():
            base = llm(ids).logits
        assert torch.equal(llm(ids).logits, unmerged)  # wrapping kept the trained adapter
        peft_model.merge_and_unload()
        merged = llm(ids).logits
    assert not any(".lora_" in name for name, _ in llm.named_parameters())
    assert torch.allclose(unmerged, merged, atol=1e-5, rtol=0), (unmerged - merged).abs().max()
    assert (unmerged - base).abs().max() > 1e-3  # the adapters matter, so the comparison above can fail


def _settings(run_dir: Path):
    from prismatic.assembly import lora_settings
    from prismatic.loader import model_config_of

    return lora_settings(model_config_of(run_dir)[0])


@pytest.mark.slow
def test_lora_resume_is_bit_exact(tiny_data_root: Path, lora_run: Path, tmp_path: Path) -> None:
    args = small_run_args(tiny_data_root, tmp_path, "lora", 6, *LORA_FLAGS)
    run_pretrain([*args, "--stop_after_step", "3"])
    run_pretrain([*args, "--resume", "auto"])
    assert losses(tmp_path / "lora") == losses(lora_run)


@pytest.mark.slow
def test_lora_fsdp2_two_processes_match_one_process(tiny_data_root: Path, lora_run: Path, tmp_path: Path) -> None:
    args = small_run_args(tiny_data_root, tmp_path, "lora-fsdp", 6, *LORA_FLAGS,
                          "--model.finetune_per_device_batch_size", "1")  # fmt: skip
    run_pretrain(args, nproc=2)
    single, fsdp = losses(lora_run), losses(tmp_path / "lora-fsdp")
    assert len(fsdp) == 6 and max(abs(a - b) for a, b in zip(single, fsdp)) < 1e-5, (single, fsdp)


@pytest.mark.slow
def test_a_lora_run_from_the_feature_cache_equals_the_live_run(tiny_data_root: Path, lora_run: Path, tmp_path: Path):
    """LoRA on the LLM leaves the encoders frozen: a run reading their features from the cache has the same losses,
    bit for bit (fp32, per-sample encoders); LoRA on the static encoder makes it train, which the cache refuses."""
    from prismatic.preprocessing.feature_cache import FeatureCache

    args = small_run_args(tiny_data_root, tmp_path, "lora-cached", 6, *LORA_FLAGS)
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(REPO / "scripts" / "cache_features.py"), *args, "--feature_cache_dir",
                    str(cache)], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)  # fmt: skip
    result = run_pretrain([*args, "--feature_cache_dir", str(cache)])
    hits = [int(h) for h in re.findall(r"(\d+) hits / \d+ misses", result.stderr)]
    assert hits and sum(hits) > 0, result.stderr[-2000:]
    assert losses(tmp_path / "lora-cached") == losses(lora_run)
    vision_lora = build_vlm(_lora_cfg(lora_vision=True), stage="finetune")
    with pytest.raises(ValueError, match="train in this stage"):
        FeatureCache.open(cache, vision_lora.vision_backbone)


def test_lora_with_activation_checkpointing_mixed_precision_and_accumulation(tiny_data_root: Path) -> None:
    from prismatic.conf.datasets import get_dataset_config
    from prismatic.preprocessing.materialize import get_dataset_and_collator
    from prismatic.training.strategies import get_train_strategy
    from prismatic.util.distributed import DistributedContext

    cfg = _lora_cfg("prism_siglip+tiny", enable_mixed_precision_training=True)
    vlm = build_vlm(cfg, stage="finetune")
    dataset_cfg = get_dataset_config("llava-custom")
    dataset_cfg.dataset_root_dir = tiny_data_root
    dataset_cfg.finetune_stage_components = (Path("finetune.json"), Path("images"))
    dataset, collator = get_dataset_and_collator(
        "finetune", dataset_cfg, vlm.vision_backbone.get_image_transform(), vlm.llm_backbone.conversation_tokenizer(),
        vlm.num_visual_tokens, fill_text_only_batches=True,
    )  # fmt: skip
    ctx = DistributedContext(0, 1, 0, 1, torch.device("cpu"))
    strategy = get_train_strategy("single", vlm, ctx, cfg.optimization("finetune"), cfg.precision, True, 4)
    strategy.setup()
    grads: dict[str, torch.Tensor | None] = {}
    strategy.optimizer.register_step_pre_hook(
        lambda *_: grads.update({n: p.grad for n, p in vlm.named_parameters()})
    )
    result = strategy.train_step([collator([dataset[0], dataset[1]]), collator([dataset[13], dataset[2]])])
    assert math.isfinite(result.loss) and not result.skipped
    trained = {n for n, g in grads.items() if g is not None and g.abs().max() > 0}
    assert any(".lora_B." in n for n in trained) and any(n.startswith("projector.") for n in trained)
    assert all(n.startswith("projector.") or ".lora_" in n for n in trained)
