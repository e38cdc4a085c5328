"""The training CLI without training: model configs generated from the registry, the README training command parsed
verbatim, YAML configs with CLI overrides, validation that fails before any model is built, the hf_token contract, the
optimizer groups and schedule, and train.sh. All fast (no subprocess launches torchrun here)."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import math
import os
import shlex
import subprocess
from contextlib import redirect_stderr
from pathlib import Path

import draccus
import pytest
import torch

from prismatic.conf.models import MODEL_CONFIGS, ModelConfig, get_model_config
from prismatic.conf.pretrain import PretrainConfig
from prismatic.models.backbones.vision.svd_config import DEFAULT_SVD_MODEL_ID
from prismatic.models.registry import MODEL_ALIASES, MODEL_REGISTRY
from prismatic.training.optimizer import UNET_LR_SCALE, build_param_groups, lr_multiplier, scaled_lr_parameter_ids
from prismatic.training.run_setup import resolve_hf_token, save_run_config

REPO = Path(__file__).resolve().parents[1]
SPEC_ARGS = """--model.type "dyva_siglip" \
  --model.model_id "dyva_siglip" --model.arch_specifier "no-align+dual" \
  --model.llm_backbone_id "llama2-7b-pure" --model.llm_max_length 2048 \
  --model.image_resize_strategy "resize-naive" --model.enable_mixed_precision_training True \
  --model.finetune_per_device_batch_size 1 --num_frames 8 --model.finetune_learning_rate 1e-5 \
  --hf_token HF_TOKEN --run_id "example" --run_root_dir "runs" --dataset.type "llava_svd" \
  --wandb_project P --wandb_entity E --stage "finetune\""""


@pytest.fixture(scope="module")
def pretrain():
    spec = importlib.util.spec_from_file_location("pretrain_cli_script", REPO / "scripts" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(pretrain, args: list[str]):
    return draccus.parse(PretrainConfig, args=args)


# === Model configs come from the registry ===
def test_every_registry_id_and_alias_is_a_model_type() -> None:
    assert set(MODEL_CONFIGS) == set(MODEL_REGISTRY) | set(MODEL_ALIASES)
    for name in ("dyva_siglip", "dyva_siglip+7b", "dyva_siglip_qwen+7b", "dyva_dino+7b", "dyva_clip+7b", "dyva-svd+7b"):
        assert name in MODEL_CONFIGS
    for name, cls in MODEL_CONFIGS.items():
        spec = MODEL_REGISTRY[MODEL_ALIASES.get(name, name)]
        config = cls()
        config.validate()
        assert (config.model_id, config.vision_backbone_id, config.llm_backbone_id) == (
            name, spec.vision_backbone_id, spec.llm_backbone_id)  # fmt: skip
        assert (config.arch_specifier, config.finetune_stage, config.svd_num_frames) == (
            spec.arch_specifier, spec.stage, spec.num_frames)  # fmt: skip
        assert (config.svd_mode, config.svd_tap) == (spec.svd_mode, spec.tap)
    assert get_model_config("dyva-svd-unet+7b").finetune_stage == "finetune-unet"
    assert get_model_config("dyva-svd-f14+7b").svd_num_frames == 14


def test_spec_command_parses_verbatim_and_every_flag_means_what_it_says(pretrain) -> None:
    cfg = parse(pretrain, shlex.split(SPEC_ARGS))
    cfg.resolve()
    model = cfg.model
    assert type(model) is MODEL_CONFIGS["dyva_siglip"] and model.model_id == "dyva_siglip"
    assert (model.arch_specifier, model.llm_backbone_id) == ("no-align+dual", "llama2-7b-pure")
    assert model.llm_max_length == 2048
    assert model.image_resize_strategy == "resize-naive" and model.enable_mixed_precision_training is True
    assert model.finetune_per_device_batch_size == 1 and model.finetune_learning_rate == 1e-5
    assert cfg.num_frames == 8 and model.svd_num_frames == 8
    svd = model.svd_encoder_config(cfg.num_frames)
    assert (svd.num_frames, svd.model_id, svd.mode) == (8, DEFAULT_SVD_MODEL_ID, "release")
    assert (cfg.hf_token, cfg.run_id, cfg.run_root_dir, cfg.stage) == ("HF_TOKEN", "example", Path("runs"), "finetune")
    assert cfg.dataset.dataset_id == "llava-svd" and draccus.encode(cfg)["dataset"]["type"] == "llava_svd"
    assert (cfg.wandb_project, cfg.wandb_entity) == ("P", "E") and "wandb" in cfg.trackers
    assert cfg.trainable_stage == "finetune" and cfg.stage.recipe == "finetune"


def test_num_frames_is_honoured(pretrain) -> None:
    cfg = parse(pretrain, ["--model.type", "dyva_siglip+tiny", "--num_frames", "4"])
    cfg.resolve()
    assert cfg.model.svd_num_frames == 4 and cfg.model.svd_encoder_config().num_frames == 4
    default = parse(pretrain, ["--model.type", "dyva-svd-f14+7b"])
    default.resolve()
    assert default.num_frames == 14


PRETRAIN_CONFIGS = [p for p in sorted((REPO / "configs").glob("*.yaml")) if "scripts/pretrain.py" in p.read_text()]


@pytest.mark.parametrize("path", PRETRAIN_CONFIGS, ids=lambda p: p.name)
def test_yaml_configs_parse_validate_and_accept_overrides(pretrain, path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# Run:") and "scripts/pretrain.py" in lines[0] and "--config_path" in lines[0]
    assert any(line.startswith("# Produces:") for line in lines[:5])
    cfg = draccus.parse(PretrainConfig, config_path=str(path), args=["--model.finetune_learning_rate", "3e-5"])
    cfg.resolve()
    cfg.model.validate()
    assert cfg.model.finetune_learning_rate == 3e-5  # the CLI wins over the file
    assert cfg.run_id == path.stem


def test_paper_configs_hold_the_paper_recipe(pretrain) -> None:
    for name, model_type in (("dyva-7b", "dyva_siglip+7b"), ("dyva-qwen25-7b", "dyva_siglip_qwen+7b")):
        cfg = draccus.parse(PretrainConfig, config_path=str(REPO / "configs" / f"{name}.yaml"), args=[])
        model = cfg.model
        assert type(model) is MODEL_CONFIGS[model_type] and cfg.seed == 7 and cfg.num_frames == 8
        assert (model.finetune_global_batch_size, model.finetune_learning_rate, model.finetune_weight_decay) == (
            128, 2e-5, 0.1)  # fmt: skip
        assert model.finetune_train_strategy == "fsdp-full-shard" and model.enable_gradient_checkpointing


# === Validation: before any model is built, naming the field and the valid values ===
INVALID = [
    ({"vision_backbone_id": "nope"}, "--model.vision_backbone_id", "siglip+svd"),
    ({"llm_backbone_id": "nope"}, "--model.llm_backbone_id", "qwen25-7b-chat"),
    ({"arch_specifier": "no-align+nope"}, "--model.arch_specifier", "no-align+dual"),
    ({"image_resize_strategy": "stretch"}, "--model.image_resize_strategy", "letterbox"),
    ({"finetune_train_strategy": "zero3"}, "--model.finetune_train_strategy", "fsdp-hybrid-shard"),
    ({"finetune_lr_scheduler_type": "step"}, "--model.finetune_lr_scheduler_type", "constant"),
    ({"svd_mode": "exact"}, "--model.svd_mode", "release"),
    ({"svd_placement": "everywhere"}, "--model.svd_placement", "cond-slots"),
    ({"finetune_global_batch_size": 6}, "--model.finetune_global_batch_size", "per_device_batch_size"),
    ({"finetune_warmup_ratio": 1.5}, "--model.finetune_warmup_ratio", "[0, 1)"),
    ({"finetune_learning_rate": 0.0}, "--model.finetune_learning_rate", "> 0"),
]


@pytest.fixture
def no_model_build(pretrain, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before validation failed")

    monkeypatch.setattr(pretrain, "build_vlm", refuse)


@pytest.mark.parametrize(("overrides", "flag", "valid"), INVALID, ids=[f for _, f, _ in INVALID])
def test_invalid_model_values_fail_before_model_build(pretrain, no_model_build, overrides, flag, valid) -> None:
    cfg = parse(pretrain, ["--model.type", "dyva_siglip+tiny"])
    for key, value in overrides.items():
        setattr(cfg.model, key, value)
    with pytest.raises(ValueError) as error:
        pretrain.pretrain(cfg)
    assert flag in str(error.value) and valid in str(error.value)


def test_invalid_run_values_fail_before_model_build(pretrain, no_model_build, tmp_path: Path) -> None:
    cases = [
        (["--stage", "align"], "--stage align"),  # a no-align model has no align stage
        (["--model.type", "dyva-svd-f4+7b"], "--pretrained_checkpoint"),  # align+ arch, finetuned without its projector
        (["--hf_token", "hf_abcdefghijklmnop"], "--hf_token"),
        (["--trackers", "[jsonl, tensorboard]"], "--trackers"),
        (["--model.type", "prism_siglip+tiny", "--stage", "finetune-unet"], "U-Net"),
        (["--dataset.type", "llava-svd", "--dataset.dataset_root_dir", str(tmp_path / "missing")], "dataset_root_dir"),
    ]
    for args, message in cases:
        cfg = parse(pretrain, ["--model.type", "dyva_siglip+tiny", "--run_root_dir", str(tmp_path), *args])
        with pytest.raises((ValueError, FileNotFoundError), match=message.replace("+", r"\+")):
            pretrain.pretrain(cfg)
    assert not any(tmp_path.iterdir())  # nothing written either


def test_invalid_cli_choice_names_the_flag_and_choices(pretrain) -> None:
    stderr = io.StringIO()
    with redirect_stderr(stderr), pytest.raises(SystemExit):
        parse(pretrain, ["--model.type", "dyva_siglip+tiny", "--model.finetune_train_strategy", "zero3"])
    assert "--model.finetune_train_strategy" in stderr.getvalue() and "fsdp-full-shard" in stderr.getvalue()
    stderr = io.StringIO()
    with redirect_stderr(stderr), pytest.raises(SystemExit):
        parse(pretrain, ["--model.type", "dyva_siglip+70b"])
    assert "--model.type" in stderr.getvalue() and "dyva_siglip_qwen+7b" in stderr.getvalue()


# === hf_token: a name, resolved, never stored ===
def test_hf_token_is_resolved_from_env_or_file_and_never_saved(tmp_path: Path, monkeypatch, pretrain) -> None:
    secret = "hf_SECRET_VALUE_0123456789"
    monkeypatch.setenv("MY_TOKEN_VAR", secret)
    assert resolve_hf_token("MY_TOKEN_VAR") == secret
    token_file = tmp_path / "token.txt"
    token_file.write_text(secret + "\n")
    assert resolve_hf_token(str(token_file)) == secret
    assert resolve_hf_token("NO_SUCH_VARIABLE_XYZ") is None
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        resolve_hf_token(secret)

    cfg = parse(pretrain, ["--model.type", "dyva_siglip+tiny", "--hf_token", "MY_TOKEN_VAR"])
    cfg.resolve()
    save_run_config(cfg, tmp_path, secret=secret)
    for name in ("config.yaml", "config.json"):
        text = (tmp_path / name).read_text()
        assert secret not in text and "MY_TOKEN_VAR" in text
    cfg.run_id = secret  # a token smuggled into any field is refused, and nothing is written
    with pytest.raises(RuntimeError, match="Refusing"):
        save_run_config(cfg, tmp_path / "other", secret=secret)


def test_saved_config_json_round_trips_to_the_model_config(tmp_path: Path, pretrain) -> None:
    cfg = parse(pretrain, ["--model.type", "dyva_siglip+tiny", "--num_frames", "2", "--model.svd_sigma_index", "3"])
    cfg.resolve()
    save_run_config(cfg, tmp_path, secret=None)
    saved = json.loads((tmp_path / "config.json").read_text())
    model = draccus.decode(ModelConfig, saved["model"])
    assert model == cfg.model and model.svd_encoder_config().num_frames == 2
    reparsed = draccus.parse(PretrainConfig, config_path=str(tmp_path / "config.yaml"), args=[])
    assert reparsed.model == cfg.model and reparsed.num_frames == 2


# === Optimizer groups and schedule ===
def test_param_groups_no_decay_on_vectors_and_unet_lr_scale() -> None:
    from prismatic.assembly import build_vlm

    vlm = build_vlm("dyva_siglip+tiny", stage="finetune-unet")
    groups = {g["name"]: g for g in build_param_groups(vlm, 1e-4, 0.1, scaled_lr_parameter_ids(vlm))}
    assert set(groups) == {"decay", "no-decay", "decay+unet", "no-decay+unet"}
    unet_ids = {id(p) for p in vlm.vision_backbone.generative.unet.parameters()}
    for name, group in groups.items():
        assert group["lr"] == pytest.approx(1e-4 * (UNET_LR_SCALE if "unet" in name else 1.0))
        assert group["weight_decay"] == (0.1 if name.startswith("decay") else 0.0)
        assert all((id(p) in unet_ids) == ("unet" in name) for p in group["params"])
        assert all(p.requires_grad and (p.ndim >= 2) == name.startswith("decay") for p in group["params"])
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    assert in_groups == {id(p) for p in vlm.parameters() if p.requires_grad}  # frozen parameters: no state


def test_lr_schedule_linear_warmup_then_cosine() -> None:
    total, warmup = 100, 3
    values = [lr_multiplier(s, "linear-warmup+cosine-decay", total, warmup) for s in range(total)]
    assert values[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert values[3] == 1.0 and all(a >= b for a, b in itertools.pairwise(values[3:]))
    assert values[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 96 / 97)))
    assert lr_multiplier(50, "constant", total, warmup) == 1.0


@pytest.mark.slow
def test_unet_trainable_stage_gets_gradients(tmp_path: Path) -> None:
    from prismatic.assembly import build_vlm
    from prismatic.training.strategies import SingleDeviceStrategy
    from prismatic.util.distributed import DistributedContext

    torch.manual_seed(0)
    model_cfg = get_model_config("dyva_siglip+tiny")
    model_cfg.enable_mixed_precision_training = True
    vlm = build_vlm(model_cfg, stage="finetune-unet")
    ctx = DistributedContext(0, 1, 0, 1, torch.device("cpu"))
    transform = vlm.vision_backbone.get_image_transform()
    strategy = SingleDeviceStrategy(vlm, ctx, get_model_config("dyva-svd-unet+7b").optimization("finetune"),
                                    model_cfg.precision, False, 4)  # fmt: skip
    strategy.setup()
    assert next(vlm.vision_backbone.generative.unet.parameters()).dtype == torch.float32  # trained: not cast to bf16
    grads: dict[str, float] = {}
    strategy.optimizer.register_step_pre_hook(
        lambda *_: grads.update({n: float(p.grad.abs().sum()) for n, p in vlm.named_parameters() if p.grad is not None})
    )
    from PIL import Image

    from prismatic.models.backbones.vision.base_vision import collate_pixel_values

    ids = torch.tensor([[1, 415, 3469, 349, 2760, 28723, 2]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
             "has_image": torch.tensor([True]),
             "pixel_values": collate_pixel_values([transform(Image.new("RGB", (32, 32), (200, 10, 10)))])}  # fmt: skip
    batch["labels"][0, 0] = -100
    strategy.train_step([batch])
    assert any(".unet." in n and g > 0 for n, g in grads.items())


def test_train_sh_wraps_the_spec_command() -> None:
    env = {**os.environ, "DRY_RUN": "1", "NPROC": "2", "LR": "2e-5", "MODEL_TYPE": "dyva_siglip_qwen+7b"}
    out = subprocess.run(["bash", str(REPO / "train.sh"), "--save_interval", "7"], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    args = shlex.split(out)
    assert args[:5] == ["torchrun", "--nnodes", "1", "--nproc-per-node", "2"]
    flags = dict(zip(args[args.index("scripts/pretrain.py") + 1 :: 2], args[args.index("scripts/pretrain.py") + 2 :: 2]))
    assert flags["--model.type"] == "dyva_siglip_qwen+7b" and flags["--model.finetune_learning_rate"] == "2e-5"
    assert flags["--model.arch_specifier"] == "no-align+dual" and flags["--num_frames"] == "8"
    assert flags["--dataset.type"] == "llava_svd" and flags["--hf_token"] == "HF_TOKEN"
    assert flags["--save_interval"] == "7" and flags["--wandb_project"] == "P"
