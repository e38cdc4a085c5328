"""Training recipes end to end, each through `scripts/pretrain.py` as a user runs it (subprocess; tiny models, fp32,
no loader workers), except the non-finite-gradient check, which drives the training strategy in-process:

- the two-stage recipe: `--stage align` of an `align+` arch on caption data exports the projector only, and
  `--stage finetune --pretrained_checkpoint <align run>` starts from exactly those weights (and refuses to start
  without them);
- a step whose gradient norm is not finite is skipped (weights and optimizer state untouched, the metrics say so), and
  training goes on;
- resuming mid-epoch and then exactly at an epoch boundary reproduces the uninterrupted run bit for bit, with a fresh
  order for the new epoch;
- Qwen2.5 (tied input/output embeddings) trained under torchrun + FSDP2: the export keeps the tie and loads back with
  `prismatic.load()` as the trained weights, still tied.

The uninterrupted reference is the session's shared tiny run (`tiny_run_dir`, conftest.py).
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch
from helpers import (
    TINY_RUN_STEPS,
    data_args,
    launch_pretrain,
    losses,
    metric_rows,
    run_pretrain,
    small_run_args,
    write_caption_dataset,
    write_llava_dataset,
)
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

EMBED = "llm_backbone.llm.model.embed_tokens.weight"
LM_HEAD = "llm_backbone.llm.lm_head.weight"


@pytest.fixture(scope="module")
def recipe_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny run's finetune data (same 16 samples) plus `align.json`: 8 captioned images."""
    return write_caption_dataset(write_llava_dataset(tmp_path_factory.mktemp("recipe-data")))


def align_args(data_root: Path, run_root: Path, run_id: str, steps: int = 2) -> list[str]:
    """`--stage align` of the tiny DyVA with an `align+` arch: 2 steps of 4 captions (lr 1e-3)."""
    flags = (
        f"--model.type dyva_siglip+tiny --model.arch_specifier align+dual --stage align --num_frames 2 "
        f"--run_id {run_id} --model.align_max_steps {steps} --model.align_global_batch_size 4 "
        "--model.align_per_device_batch_size 2 --num_workers 0 --save_interval 100"
    )
    return [*shlex.split(flags), *data_args(data_root), "--dataset.align_stage_components", "[align.json, images]",
            "--run_root_dir", str(run_root)]  # fmt: skip


# === 1. align -> finetune ===
@pytest.mark.slow
def test_align_exports_the_projector_and_finetune_starts_from_exactly_it(
    recipe_data: Path, tiny_run_dir: Path, tmp_path: Path
) -> None:
    run_pretrain(align_args(recipe_data, tmp_path, "align"))
    align_dir = tmp_path / "align"
    rows = metric_rows(align_dir)
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and r["label_tokens"] > 0 for r in rows)
    aligned = load_file(align_dir / "model.safetensors")
    assert aligned and all(k.startswith("projector.") for k in aligned), sorted(aligned)  # projector only
    with safe_open(str(align_dir / "model.safetensors"), "pt") as exported:
        assert exported.metadata()["stage"] == "align"
    config = json.loads((align_dir / "config.json").read_text())
    assert config["stage"] == "align" and config["model"]["arch_specifier"] == "align+dual"

    # Finetune one step from the align run at a learning rate (1e-30) too small to move any weight measurably: the
    # exported projector is then the projector the run started from. Were the checkpoint ignored, it would be the
    # random init, which the two align steps (lr 1e-3) moved by ~1e-3.
    from_align = ["--model.arch_specifier", "align+dual", "--pretrained_checkpoint", str(align_dir)]
    args = small_run_args(recipe_data, tmp_path, "finetune", 1, *from_align, "--model.finetune_learning_rate", "1e-30")
    run_pretrain(args)
    finetuned = load_file(tmp_path / "finetune" / "model.safetensors")
    projector = {k: v for k, v in finetuned.items() if k.startswith("projector.")}
    assert projector.keys() == aligned.keys()
    for key, value in aligned.items():
        assert torch.allclose(projector[key], value, rtol=0, atol=1e-12), key
    assert any(k.startswith("llm_backbone.") for k in finetuned)  # the finetune stage trains (and exports) the LLM
    # Same seed, data and batches as the shared run (the `no-align+dual` arch of the same model, projector at its random
    # init; a run of this arch that ignored the checkpoint starts at exactly that loss): only the projector differs.
    first = losses(tmp_path / "finetune")[0]
    assert math.isfinite(first) and first != losses(tiny_run_dir)[0]


@pytest.mark.slow
def test_finetuning_an_align_arch_without_its_projector_fails_clearly(recipe_data: Path, tmp_path: Path) -> None:
    result = launch_pretrain(small_run_args(recipe_data, tmp_path, "no-projector", 1, "--model.arch_specifier",
                                            "align+dual"))  # fmt: skip
    assert result.returncode != 0
    assert "--pretrained_checkpoint" in result.stderr and "align+dual" in result.stderr, result.stderr[-3000:]
    assert "--stage align" in result.stderr  # says how to get one
    assert not (tmp_path / "no-projector").exists()  # refused before a run directory or a model was made


# === 2. A non-finite gradient skips the step ===
def _tiny_batch(vlm) -> dict:
    """One collated micro-batch of the tiny model: two image rows (answers of different length) and a text-only row."""
    from prismatic.preprocessing.collator import PaddedCollator, filler_pixel_values

    transform = vlm.vision_backbone.get_image_transform()
    items = []
    for color, question, answer in (((220, 30, 30), "What color is the image?", "It is red."),
                                    ((30, 30, 220), "Describe the image.", "A plain blue square on its own."),
                                    (None, "What is 2 plus 2?", "2 + 2 = 4.")):  # fmt: skip
        turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        input_ids, labels = vlm.llm_backbone.tokenize_conversation(turns)
        pixel_values = None if color is None else transform(Image.new("RGB", (32, 32), color))
        items.append({"input_ids": input_ids, "labels": labels, "pixel_values": pixel_values})
    collator = PaddedCollator(vlm.llm_backbone.pad_token_id, filler_pixel_values=filler_pixel_values(transform))
    return collator(items)


def test_a_step_with_a_non_finite_gradient_is_skipped_and_training_goes_on(tmp_path: Path) -> None:
    from prismatic.assembly import build_vlm
    from prismatic.conf.models import get_model_config
    from prismatic.models.stages import Stage
    from prismatic.training.metrics import MetricsLogger
    from prismatic.training.options import Precision
    from prismatic.training.strategies import get_train_strategy
    from prismatic.util.distributed import DistributedContext

    cfg = get_model_config("prism_siglip+tiny")
    vlm = build_vlm(cfg, stage=Stage.FINETUNE)  # tiny: random weights, no download
    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))
    strategy = get_train_strategy("single", vlm, ctx, cfg.optimization(Stage.FINETUNE), Precision(mixed=False),
                                  enable_gradient_checkpointing=False, total_steps=4)  # fmt: skip
    strategy.setup()
    batch = _tiny_batch(vlm)
    trainable = {n: p for n, p in vlm.named_parameters() if p.requires_grad}
    assert any(n.startswith("projector.") for n in trainable) and any(n.startswith("llm_backbone.") for n in trainable)

    def weights() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in trainable.items()}

    def optimizer_state() -> dict[str, dict[str, torch.Tensor]]:
        names = {id(p): n for n, p in trainable.items()}
        return {names[id(p)]: {k: torch.as_tensor(v).clone() for k, v in s.items()}
                for p, s in strategy.optimizer.state.items()}  # fmt: skip

    metrics = MetricsLogger(tmp_path, ("jsonl",), True, "nan-skip", {}, None, None)
    metrics.begin(3, 0)
    results = [strategy.train_step([batch])]
    metrics.log_step(1, 0, results[0], 0.1)
    assert not results[0].skipped and math.isfinite(results[0].grad_norm)

    # One projector weight's gradient turns NaN for one step (as an overflow would make it).
    weights_before, state_before = weights(), optimizer_state()
    assert state_before and all(int(s["step"]) == 1 for s in state_before.values())
    name, param = next((n, p) for n, p in trainable.items() if n.startswith("projector."))
    handle = param.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    results.append(strategy.train_step([batch]))
    handle.remove()
    metrics.log_step(2, 0, results[1], 0.1)
    assert results[1].skipped and not math.isfinite(results[1].grad_norm)
    assert math.isfinite(results[1].loss)  # the forward pass was fine; only the update is refused
    after = weights()
    assert all(torch.equal(after[n], weights_before[n]) for n in trainable), "a skipped step changed weights"
    state_after = optimizer_state()
    assert state_after.keys() == state_before.keys()
    for key, state in state_before.items():
        assert all(torch.equal(state_after[key][k], v) for k, v in state.items()), key  # Adam moments, step count
    assert all(p.grad is None or not p.grad.any() for p in trainable.values())  # no NaN left for the next step

    # Training goes on: the next step updates every weight it reaches, from finite moments.
    results.append(strategy.train_step([batch]))
    metrics.log_step(3, 0, results[2], 0.1)
    metrics.close()
    assert not results[2].skipped and math.isfinite(results[2].grad_norm) and math.isfinite(results[2].loss)
    assert not torch.equal(param.detach(), weights_before[name])
    assert all(torch.isfinite(p).all() for p in trainable.values())
    assert all(int(s["step"]) == 2 for s in optimizer_state().values())  # the skipped step was not counted
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in rows] == [False, True, False]
    assert not math.isfinite(rows[1]["grad_norm"]) and math.isfinite(rows[2]["grad_norm"])


# === 3. Resume mid-epoch, then exactly at an epoch boundary ===
@pytest.mark.slow
def test_resume_mid_epoch_and_at_an_epoch_boundary_is_bit_exact(
    tiny_data_root: Path, tiny_run_dir: Path, tmp_path: Path
) -> None:
    # The shared run's flags (16 samples at global batch 4: epoch 1 is steps 1-4), checkpoints every 2 steps, keeping 2.
    checkpoints = ["--save_interval", "2", "--keep_last", "2"]
    args = small_run_args(tiny_data_root, tmp_path, "resumed", TINY_RUN_STEPS, *checkpoints)
    run_dir = tmp_path / "resumed"
    run_pretrain([*args, "--stop_after_step", "3"])  # mid-epoch, checkpointed at step 3
    assert len(losses(run_dir)) == 3 and not (run_dir / "model.safetensors").exists()
    run_pretrain([*args, "--resume", "auto", "--stop_after_step", "4"])  # the last step of epoch 1
    state = json.loads((run_dir / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["sampler"]["epoch"] == 0 and state["sampler"]["consumed_samples"] == 16
    assert not (run_dir / "model.safetensors").exists()
    run_pretrain([*args, "--resume", "auto"])  # from the epoch boundary to the end

    assert losses(run_dir) == losses(tiny_run_dir)  # bit for bit, across both interruptions
    resumed, reference = load_file(run_dir / "model.safetensors"), load_file(tiny_run_dir / "model.safetensors")
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000004", "step-000006"]  # keep_last
    rows = metric_rows(run_dir)
    assert [r["epoch"] for r in rows] == [0, 0, 0, 0, 1, 1]
    # Epoch 2 is a new permutation, not a replay of epoch 1: its first batches hold other samples.
    batches = [(r["tokens"], r["label_tokens"]) for r in rows]
    assert batches[4:6] != batches[0:2], batches


# === 4. Qwen2.5 with tied embeddings, through torchrun + FSDP2 ===
@pytest.mark.slow
def test_qwen_trains_under_torchrun_and_its_tied_export_loads_back(tiny_data_root: Path, tmp_path: Path) -> None:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from prismatic import load
    from prismatic.models.backbones.llm.registry import get_llm_spec

    assert get_llm_spec("tiny-qwen25").build_config().tie_word_embeddings  # this test is about the tied case
    # 2 processes x 2 micro-batches of 1, FSDP2 full shard (the tiny models' default strategy), 2 steps.
    args = small_run_args(tiny_data_root, tmp_path, "qwen", 2, "--model.finetune_per_device_batch_size", "1",
                          "--save_interval", "100", model_type="dyva_siglip_qwen+tiny")  # fmt: skip
    run_pretrain(args, nproc=2)
    run_dir = tmp_path / "qwen"
    config = json.loads((run_dir / "config.json").read_text())["model"]
    assert (config["llm_backbone_id"], config["finetune_train_strategy"]) == ("tiny-qwen25", "fsdp-full-shard")
    assert all(math.isfinite(loss) for loss in losses(run_dir))

    # The export is what training ended with (the final checkpoint's model state), and the tie held through FSDP2.
    exported = load_file(run_dir / "model.safetensors")
    dcp_to_torch_save(run_dir / "checkpoints" / "step-000002", tmp_path / "final.pt")
    trained = torch.load(tmp_path / "final.pt", weights_only=True)["model"]
    assert exported.keys() == trained.keys() and {EMBED, LM_HEAD} <= exported.keys()
    assert all(torch.equal(exported[k], trained[k]) for k in trained)
    assert torch.equal(exported[EMBED], exported[LM_HEAD])

    vlm = load(run_dir)
    llm = vlm.llm_backbone.llm
    assert llm.config.tie_word_embeddings
    assert llm.get_output_embeddings().weight is llm.get_input_embeddings().weight  # still one tensor
    own = vlm.state_dict()
    assert all(torch.equal(own[k], v) for k, v in exported.items())
    # Logits come from the trained embedding matrix, and generation runs on the loaded model.
    ids = torch.tensor([[llm.config.bos_token_id, 100, 200, 300]])
    with torch.inference_mode():
        hidden = llm.model(input_ids=ids).last_hidden_state
        logits = llm(input_ids=ids).logits
    assert torch.allclose(logits, hidden @ trained[EMBED].T, atol=1e-5, rtol=1e-5)
    builder = vlm.get_prompt_builder()
    builder.add_turn(role="human", message="What color is the image?")
    image = Image.new("RGB", (32, 32), (220, 30, 30))
    text = vlm.generate(image, builder.get_prompt(), max_new_tokens=4)
    assert isinstance(text, str) and text == load(run_dir).generate(image, builder.get_prompt(), max_new_tokens=4)
