"""Tiny backbones on a trained tiny world model: `svd_model_id` naming a local diffusers directory (what
`scripts/train_world_model.py --svd_model_id tiny` exports as `<run_dir>/world_model/`) is the SVD a tiny backbone
runs, at 64 px; None keeps the seeded random components; anything else is refused with what to pass.

The world model directory here is a seeded tiny SVD (another seed than the random encoder's, plus a visible offset on
the U-Net's input convolution) saved by `save_svd_components`, the writer `prismatic.world_model.export` uses.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import run_pretrain, small_run_args
from PIL import Image
from safetensors.torch import load_file

from prismatic import load, loader
from prismatic.assembly import build_vision_backbone
from prismatic.conf.models import ModelConfig, get_model_config
from prismatic.models.backbones.vision.base_vision import VisionBackbone
from prismatic.models.backbones.vision.svd_components import (
    SVDComponents,
    build_tiny_svd_components,
    save_svd_components,
)
from prismatic.models.backbones.vision.svd_config import DEFAULT_SVD_MODEL_ID, TINY_SVD_CONFIG
from prismatic.preprocessing.feature_cache.identity import stream_identities

MODEL_TYPE = "dyva_siglip+tiny"
FRAMES = 2  # fewer SVD frame slots than the default 8: the same code path, a quarter of the U-Net work


@pytest.fixture(scope="module")
def world_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SVDComponents]:
    """A tiny world model directory (diffusers layout) and the components it holds."""
    components = build_tiny_svd_components(seed=1, image_size=TINY_SVD_CONFIG.image_size)
    with torch.no_grad():
        components.unet.conv_in.weight.add_(0.01)  # "trained": unlike any seeded init
    directory = tmp_path_factory.mktemp("world-model-run") / "world_model"
    save_svd_components(components, directory)
    return directory, components


def _config(svd_model_id: str | Path | None, model_type: str = MODEL_TYPE) -> ModelConfig:
    cfg = get_model_config(model_type)
    cfg.svd_model_id = None if svd_model_id is None else str(svd_model_id)
    cfg.svd_num_frames = FRAMES
    return cfg


def _svd_features(backbone: VisionBackbone) -> torch.Tensor:
    image = Image.new("RGB", (64, 64), (200, 40, 30))
    pixels = {key: value.unsqueeze(0) for key, value in backbone.get_image_transform()(image).items()}
    with torch.no_grad():
        return backbone(pixels)["svd"]


def test_a_tiny_backbone_runs_the_world_model_directory_it_names(world_model: tuple[Path, SVDComponents]) -> None:
    directory, components = world_model
    svd_config = _config(directory).svd_encoder_config()
    assert svd_config == replace(TINY_SVD_CONFIG, model_id=str(directory), num_frames=FRAMES)
    assert svd_config.image_size == 64

    loaded = build_vision_backbone(_config(directory), "finetune")
    random = build_vision_backbone(_config(None), "finetune")
    assert loaded.generative.config.image_size == random.generative.config.image_size == 64
    # Every U-Net tensor the encoder keeps (release pre-mid drops the rest) is the directory's, none the seeded init's.
    unet = loaded.generative.unet.state_dict()
    assert unet and all(torch.equal(value, components.unet.state_dict()[key]) for key, value in unet.items())
    assert not torch.equal(unet["conv_in.weight"], random.generative.unet.state_dict()["conv_in.weight"])
    vae = components.vae.state_dict()
    assert all(torch.equal(value, vae[key]) for key, value in loaded.generative.vae.state_dict().items())

    features, random_features = _svd_features(loaded), _svd_features(random)
    assert features.shape == random_features.shape == (1, FRAMES * 4 * 4, 64)
    assert not torch.allclose(features, random_features)

    # The feature cache keys on the weights: the SVD stream gets its own cache, the static stream's stays shared.
    ours, theirs = stream_identities(loaded), stream_identities(random)
    assert ours["svd"].fingerprint != theirs["svd"].fingerprint
    assert ours["svd"].description["weights_sha256"] != theirs["svd"].description["weights_sha256"]
    static = next(name for name in ours if name != "svd")
    assert ours[static].fingerprint == theirs[static].fingerprint


def test_none_and_the_hub_default_keep_the_random_components() -> None:
    seeded = build_tiny_svd_components(TINY_SVD_CONFIG.seed, TINY_SVD_CONFIG.image_size)
    random = build_vision_backbone(_config(None), "finetune")
    assert torch.equal(random.generative.unet.conv_in.weight, seeded.unet.conv_in.weight)
    expected = replace(TINY_SVD_CONFIG, num_frames=FRAMES)
    assert _config(None).svd_encoder_config() == expected
    # A full-size type with a tiny backbone swapped in carries the hub default: random components, as always.
    swapped = _config(DEFAULT_SVD_MODEL_ID, "dyva_siglip")
    swapped.vision_backbone_id = "tiny-siglip+svd"
    swapped.validate()
    assert swapped.svd_encoder_config() == expected


def test_the_vae_only_ablation_reads_the_directory_s_vae(world_model: tuple[Path, SVDComponents]) -> None:
    directory, components = world_model
    cfg = _config(directory)
    cfg.vision_backbone_id = "tiny-vae-only"
    vae = build_vision_backbone(cfg, "finetune").vae
    assert torch.equal(vae.quant_conv.weight, components.vae.quant_conv.weight)


def test_anything_but_a_local_world_model_directory_is_refused(
    world_model: tuple[Path, SVDComponents], tmp_path: Path
) -> None:
    directory, _ = world_model
    empty = tmp_path / "empty"
    empty.mkdir()
    for value, problem in ((tmp_path / "nowhere", "is not a local directory"), ("someone/svd-xt", "is not a local"),
                           (empty, "has no unet/ folder")):  # fmt: skip
        cfg = _config(value)
        for check in (cfg.validate, cfg.svd_encoder_config):
            with pytest.raises(FileNotFoundError, match=rf"{problem}.*exported by scripts/train_world_model\.py"):
                check()
    with pytest.raises(FileNotFoundError, match="cannot download a hub checkpoint"):
        _config("someone/svd-xt").validate()
    # A weight variant names files of a directory: meaningless for random components, fine with a directory.
    random = _config(None)
    random.svd_variant = "fp16"
    with pytest.raises(ValueError, match=r"svd_variant='fp16'.*tiny random SVD.*--model.svd_model_id DIR"):
        random.validate()
    named = _config(directory)
    named.svd_variant = "fp16"
    named.validate()
    assert named.svd_encoder_config().variant == "fp16"
    # Backbones without an SVD stream ignore svd_model_id, as before.
    assert _config(tmp_path / "nowhere", "prism_siglip+tiny").svd_encoder_config().model_id is None


def test_load_takes_a_world_model_directory_for_a_tiny_backbone(
    world_model: tuple[Path, SVDComponents], tmp_path: Path
) -> None:
    directory, _ = world_model
    cfg = _config(None)
    loader.WeightSources(svd_model_id=directory).apply(cfg)
    assert cfg.svd_model_id == str(directory)
    with pytest.raises(FileNotFoundError, match=re.escape("exported by scripts/train_world_model.py")):
        loader.WeightSources(svd_model_id=tmp_path / "nowhere").apply(_config(None))
    with pytest.raises(ValueError, match="tiny random SVD"):
        loader.WeightSources(svd_variant="fp16").apply(_config(None))
    with pytest.raises(FileNotFoundError, match=r"no 'fp16' weight files"):
        loader.WeightSources(svd_model_id=directory, svd_variant="fp16").apply(_config(None))
    with pytest.raises(ValueError, match="has none"):
        loader.WeightSources(svd_model_id=directory).apply(_config(None, "prism_siglip+tiny"))


def test_a_pretrain_run_on_the_world_model_loads_back_with_it(
    world_model: tuple[Path, SVDComponents], tiny_data_root: Path, tmp_path: Path
) -> None:
    """scripts/pretrain.py records the directory in config.json, so `load(run_dir)` rebuilds the same encoder."""
    directory, components = world_model
    run_pretrain(small_run_args(tiny_data_root, tmp_path, "wm", 1, "--model.svd_model_id", str(directory)))
    run_dir = tmp_path / "wm"
    assert json.loads((run_dir / "config.json").read_text())["model"]["svd_model_id"] == str(directory)
    vlm = load(run_dir)
    assert vlm.vision_backbone.generative.config.model_id == str(directory)
    assert torch.equal(vlm.vision_backbone.generative.unet.conv_in.weight, components.unet.conv_in.weight)
    own = vlm.state_dict()
    assert all(torch.equal(own[key], value) for key, value in load_file(run_dir / "model.safetensors").items())
