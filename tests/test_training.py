"""Training end to end on CPU: the README training command under torchrun, FSDP2 = single process, exact resume, gradient
accumulation, DDP and hybrid sharding, pure bf16, and a loss that goes down. Tiny models (`dyva_siglip+tiny` with 2 SVD
frame slots, `prism_siglip+tiny` for in-process checks) on a generated LLaVA-format dataset with image and text-only
rows; runs go through `scripts/pretrain.py` as a user would launch them (plain python, torchrun, two torchrun "nodes").
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import losses, metric, run_pretrain, small_run_args, write_llava_dataset
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "scripts" / "pretrain.py"
TORCHRUN = Path(sys.executable).parent / "torchrun"
SECRET = "hf_NOT_A_REAL_TOKEN_1234567890"

# The README training command, verbatim except `--nproc-per-node 2` and `--standalone` (a free rendezvous port).
SPEC_COMMAND = """torchrun --nnodes 1 --nproc-per-node 2 --standalone scripts/pretrain.py --model.type "dyva_siglip" \
  --model.model_id "dyva_siglip" --model.arch_specifier "no-align+dual" \
  --model.llm_backbone_id "llama2-7b-pure" --model.llm_max_length 2048 \
  --model.image_resize_strategy "resize-naive" --model.enable_mixed_precision_training True \
  --model.finetune_per_device_batch_size 1 --num_frames 8 --model.finetune_learning_rate 1e-5 \
  --hf_token HF_TOKEN --run_id "example" --run_root_dir "runs" --dataset.type "llava_svd" \
  --wandb_project P --wandb_entity E --stage "finetune\""""

def run_pretrain_two_nodes(args: list[str], timeout: int = 300) -> None:
    """Two torchrun agents of one process each, meeting at a c10d rendezvous: a 2-node job on one machine."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    launcher = f"--nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint localhost:{port} --rdzv-id n{port}"
    command = [str(TORCHRUN), *shlex.split(launcher), str(PRETRAIN), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    errors = [node.communicate(timeout=timeout)[1] for node in nodes]
    for node, error in zip(nodes, errors):
        if node.returncode != 0:
            raise AssertionError(f"{shlex.join(command)} failed ({node.returncode}):\n{error[-6000:]}")


@pytest.fixture(scope="module")
def data_root(tiny_data_root: Path) -> Path:
    return tiny_data_root


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


# === 1. The README training command under torchrun, tiny backbones swapped in ===
@pytest.mark.slow
def test_spec_command_trains_under_torchrun_and_writes_a_complete_run_dir(tmp_path: Path) -> None:
    # `--dataset.type llava_svd` reads <root>/LLaVA-FT/llava_v1_5_mix665k.json with images under <root>/LLaVA-FT/.
    write_llava_dataset(tmp_path / "data" / "LLaVA-FT", json_name="llava_v1_5_mix665k.json", image_prefix="images/")
    argv = shlex.split(SPEC_COMMAND)
    args = argv[argv.index("scripts/pretrain.py") + 1 :]
    args[args.index("llama2-7b-pure")] = "tiny-llama2"
    args[args.index("runs")] = str(tmp_path / "runs")
    # Small: 4 samples per step (2 ranks x 2 micro-batches of 1), 3 steps.
    args += shlex.split("--model.vision_backbone_id tiny-siglip+svd --model.finetune_global_batch_size 4 "
                        "--model.finetune_max_steps 3 --num_workers 0")  # fmt: skip
    args += ["--dataset.dataset_root_dir", str(tmp_path / "data")]
    run_pretrain(args, nproc=2, env={"HF_TOKEN": SECRET})

    run_dir = tmp_path / "runs" / "example"
    for name in (
        "config.yaml",
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "loss.png",
        "checkpoints/step-000003/.metadata",
        "checkpoints/step-000003/trainer_state.json",
        "checkpoints/step-000003/rng/rank-00000.json",
        "checkpoints/step-000003/rng/rank-00001.json",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "wandb").is_dir()  # --wandb_project asks for wandb (offline here)

    config = json.loads((run_dir / "config.json").read_text())
    model = config["model"]
    assert (model["type"], model["model_id"], model["arch_specifier"]) == ("dyva_siglip", "dyva_siglip", "no-align+dual")
    assert (model["llm_backbone_id"], model["vision_backbone_id"]) == ("tiny-llama2", "tiny-siglip+svd")
    assert model["finetune_learning_rate"] == 1e-5 and model["finetune_per_device_batch_size"] == 1
    assert model["enable_mixed_precision_training"] is True and model["svd_num_frames"] == config["num_frames"] == 8
    assert config["stage"] == "finetune" and config["dataset"]["type"] == "llava_svd"
    assert (config["wandb_project"], config["wandb_entity"]) == ("P", "E") and config["hf_token"] == "HF_TOKEN"

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(k in rows[0] for k in ("epoch", "loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "time"))
    assert rows[0]["lr"] == pytest.approx(1e-5) and all(math.isfinite(r["loss"]) for r in rows)
    weights = load_file(run_dir / "model.safetensors")
    assert any(k.startswith("projector.") for k in weights) and any(k.startswith("llm_backbone.") for k in weights)
    assert not any(k.startswith("vision_backbone.") for k in weights)  # frozen encoders are not exported

    # The token itself is never written anywhere in the run directory (wandb's offline files included).
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


# === 2 + 3. FSDP2 (2 processes) = single process; resume is exact ===
@pytest.fixture(scope="module")
def single_full(tiny_run_dir: Path) -> Path:
    """The session's shared tiny run: the single-process reference (6 steps of `small_run_args`)."""
    return tiny_run_dir


@pytest.fixture(scope="module")
def fsdp_full(data_root: Path, runs: Path) -> Path:
    run_pretrain(small_run_args(data_root, runs, "fsdp-full", 6, "--model.finetune_per_device_batch_size", "1"), 2)
    return runs / "fsdp-full"


@pytest.mark.slow
def test_fsdp2_two_processes_match_single_process(single_full: Path, fsdp_full: Path) -> None:
    single, fsdp = losses(single_full), losses(fsdp_full)
    assert len(single) == len(fsdp) == 6
    assert max(abs(a - b) for a, b in zip(single, fsdp)) < 1e-5, (single, fsdp)
    # The clipped global gradient norm is computed across shards, so it is the single-process norm too.
    norms = zip(metric(single_full, "grad_norm"), metric(fsdp_full, "grad_norm"))
    assert all(abs(a - b) < 1e-4 * max(1.0, a) for a, b in norms)
    # The run mixes text-only and image global batches (modality-grouped), so text-only micro-batches ran too.
    assert json.loads((fsdp_full / "config.json").read_text())["model"]["finetune_train_strategy"] == "fsdp-full-shard"


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp-hybrid-shard"])
def test_ddp_and_hybrid_shard_match_single_process(data_root: Path, runs: Path, single_full: Path, strategy) -> None:
    args = small_run_args(data_root, runs, strategy, 6, "--model.finetune_train_strategy", strategy)
    if strategy == "ddp":
        run_pretrain(args, nproc=2)
    else:  # two "nodes" of one process: parameters replicated across nodes, sharded within each
        run_pretrain_two_nodes(args)
    single, other = losses(single_full), losses(runs / strategy)
    assert max(abs(a - b) for a, b in zip(single, other)) < 1e-5, (single, other)


# Single-process resume (mid-epoch and exactly at an epoch boundary): tests/test_recipes.py.


@pytest.mark.slow
def test_resume_fsdp2_two_processes(data_root: Path, runs: Path, fsdp_full: Path) -> None:
    args = small_run_args(data_root, runs, "fsdp-resumed", 6, "--model.finetune_per_device_batch_size", "1")
    run_pretrain([*args, "--stop_after_step", "3"], nproc=2)
    run_pretrain([*args, "--resume", "auto"], nproc=2)
    full, resumed = losses(fsdp_full), losses(runs / "fsdp-resumed")
    assert len(resumed) == 6 and max(abs(a - b) for a, b in zip(full, resumed)) < 1e-6, (full, resumed)


@pytest.mark.slow
def test_resume_auto_ignores_partial_checkpoints(data_root: Path, runs: Path, single_full: Path, tmp_path: Path) -> None:
    from prismatic.training.checkpointing import CheckpointManager
    from prismatic.util.distributed import DistributedContext

    run_dir = tmp_path / "run"
    shutil.copytree(single_full, run_dir)
    newest = run_dir / "checkpoints" / "step-000006"
    shutil.copytree(newest, run_dir / "checkpoints" / ".tmp-step-000009")  # a crash before the rename
    shutil.copytree(newest, run_dir / "checkpoints" / "step-000008")
    (run_dir / "checkpoints" / "step-000008" / "trainer_state.json").unlink()  # a crash mid-write
    manager = CheckpointManager(run_dir, DistributedContext(0, 1, 0, 1, torch.device("cpu")))
    assert manager.resolve_resume("auto") == newest
    assert manager.resolve_resume(str(run_dir)) == newest
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        manager.resolve_resume(str(run_dir / "checkpoints" / "step-000008"))


# === 4 + 6. In-process: gradient accumulation, and the loss goes down ===
def _load_pretrain_module():
    spec = importlib.util.spec_from_file_location("pretrain_script", PRETRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_strategy(data_root: Path, global_batch: int, per_device: int, pure_bf16: bool = False):
    from prismatic.assembly import build_vlm
    from prismatic.conf.datasets import get_dataset_config
    from prismatic.conf.models import get_model_config
    from prismatic.preprocessing.materialize import get_dataset_and_collator
    from prismatic.training.strategies import get_train_strategy
    from prismatic.util.distributed import DistributedContext

    torch.manual_seed(0)
    model_cfg = get_model_config("prism_siglip+tiny")
    model_cfg.finetune_global_batch_size, model_cfg.finetune_per_device_batch_size = global_batch, per_device
    model_cfg.enable_mixed_precision_training = model_cfg.pure_bf16 = pure_bf16
    vlm = build_vlm(model_cfg, stage="finetune")
    dataset_cfg = get_dataset_config("llava-custom")
    dataset_cfg.dataset_root_dir, dataset_cfg.finetune_stage_components = (
        data_root,
        (Path("finetune.json"), Path("images")),
    )
    dataset, collator = get_dataset_and_collator(
        "finetune", dataset_cfg, vlm.vision_backbone.get_image_transform(), vlm.llm_backbone.conversation_tokenizer(),
        vlm.num_visual_tokens, fill_text_only_batches=True,
    )
    ctx = DistributedContext(0, 1, 0, 1, torch.device("cpu"))
    strategy = get_train_strategy("single", vlm, ctx, model_cfg.optimization("finetune"), model_cfg.precision, False, 10)
    strategy.setup()
    return strategy, dataset, collator


def _trainable(strategy) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in strategy.vlm.named_parameters() if p.requires_grad]


def test_gradient_accumulation_matches_one_big_batch(data_root: Path) -> None:
    indices = [0, 1, 2, 13]  # answers of 1 to 3 sentences and a text-only row: unequal label counts
    updates, grads, results = [], [], []
    for micro in (4, 1):
        strategy, dataset, collator = _tiny_strategy(data_root, 4, micro)
        # Adam's first step is about lr * sign(g): float noise on a near-zero gradient would flip it by 2 lr. A large
        # eps makes the update a smooth function of the gradient, so the comparison sees the accumulation itself.
        for group in strategy.optimizer.param_groups:
            group["eps"] = 1e-2
        batches = [collator([dataset[i] for i in indices[j : j + micro]]) for j in range(0, 4, micro)]
        before = {n: p.detach().clone() for n, p in _trainable(strategy)}
        captured: dict[str, torch.Tensor] = {}

        def capture(optimizer, args, kwargs, _captured=captured, _strategy=strategy) -> None:
            _captured.update({n: p.grad.clone() for n, p in _trainable(_strategy)})

        strategy.optimizer.register_step_pre_hook(capture)
        results.append(strategy.train_step(batches))
        grads.append(captured)
        updates.append({n: p.detach() - before[n] for n, p in _trainable(strategy)})

    assert results[0].label_tokens == results[1].label_tokens
    assert abs(results[0].loss - results[1].loss) < 1e-6
    assert abs(results[0].grad_norm - results[1].grad_norm) < 1e-6
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=0), name
        assert torch.allclose(updates[0][name], updates[1][name], atol=1e-6, rtol=0), name

    # A mean of per-micro-batch means would weight rows differently: the test above can tell the two apart.
    from prismatic.training.batching import count_label_tokens

    counts = [count_label_tokens(collator([dataset[i]])["labels"]) for i in indices]
    assert len(set(counts)) > 1


def test_pure_bf16_keeps_weights_and_optimizer_state_in_bf16(data_root: Path) -> None:
    strategy, dataset, collator = _tiny_strategy(data_root, 2, 2, pure_bf16=True)
    result = strategy.train_step([collator([dataset[0], dataset[13]])])
    assert math.isfinite(result.loss) and not result.skipped
    assert all(p.dtype == torch.bfloat16 for p in strategy.vlm.parameters())
    states = [s for s in strategy.optimizer.state.values() if "exp_avg" in s]
    assert states and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.bfloat16 for s in states)


@pytest.mark.slow
def test_loss_goes_down_on_a_fixed_small_dataset(data_root: Path, tmp_path: Path) -> None:
    import draccus

    pretrain = _load_pretrain_module()
    args = small_run_args(
        data_root, tmp_path, "learn", 40, "--save_interval", "100", "--model.finetune_learning_rate", "3e-3"
    )
    run_dir = pretrain.pretrain(draccus.parse(pretrain.PretrainConfig, args=args))
    curve = losses(run_dir)
    assert len(curve) == 40
    first, last = sum(curve[:4]) / 4, sum(curve[-4:]) / 4
    assert last < first - 3.0, curve  # from ~10.4 (uniform over 32k tokens) to well below
    assert (run_dir / "loss.png").stat().st_size > 1000
