"""The generative-encoder zoo end to end: every DiT video family (CogVideoX, Wan, LTX-Video) as a WorldLM encoder.

Per family (tiny twins, no network): the registry builds SigLIP + the family and the family alone; a sample's image list
changes only the generative stream; too many keyframes is a clear error; a tiny DyVA with the family trains a few
steps under torchrun with 2 processes reading the feature cache (built by scripts/cache_features.py's code path), and
`load()` gives it back with the trained weights: its live features equal the cached ones, its generations equal a
second load's, and the evaluation harness scores it. The families' own parity tests against the diffusers pipelines
are in tests/test_encoder_<family>.py; the authors' dev-branch layout and the 7B builds are checked here too.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import draccus
import pytest
import torch
from eval_helpers import run_family, write_vsr_raw
from helpers import REPO, data_args, run_pretrain
from PIL import Image

import prismatic
from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.eval.benchmarks.vsr import VSR
from prismatic.eval.results import fingerprint_directory
from prismatic.models.backbones.vision.base_vision import collate_pixel_values
from prismatic.models.backbones.vision.registry import VIDEO_KINDS, VISION_BACKBONES
from prismatic.models.registry import MODEL_REGISTRY
from prismatic.preprocessing.feature_cache import FeatureCache

# FSDP2 (the tiny models' default strategy) shards the frozen video blocks too: the tap hook must stop cleanly there.
_TRAIN_FLAGS = ("--num_workers 0 --model.finetune_max_steps 3 --model.finetune_global_batch_size 4 "
                "--model.finetune_per_device_batch_size 2 --save_interval 100")  # fmt: skip


def _cache_features_module():
    spec = importlib.util.spec_from_file_location("cache_features_script", REPO / "scripts" / "cache_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(count: int) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(count)
    return [Image.fromarray(torch.randint(0, 256, (40, 48, 3), generator=generator, dtype=torch.uint8).numpy())
            for _ in range(count)]  # fmt: skip


@pytest.mark.parametrize("kind", VIDEO_KINDS)
def test_every_family_pairs_with_every_static_encoder_and_runs_alone(kind: str) -> None:
    for backbone_id in (f"siglip+{kind}", f"dinosiglip+{kind}", kind, f"tiny-{kind}", f"tiny-siglip+{kind}"):
        assert VISION_BACKBONES[backbone_id].generative == kind
    for model_id in (f"dyva-{kind}_siglip+7b", f"dyva-{kind}_siglip_qwen+7b", f"dyva-{kind}+7b",
                     f"dyva-{kind}_siglip+tiny", f"dyva-{kind}+tiny"):  # fmt: skip
        assert model_id in MODEL_REGISTRY
        config = get_model_config(model_id)
        config.validate()
        assert config.video_encoder_config().mode == "pipeline"


def test_the_authors_cogvideox_models_are_release_mode() -> None:
    dit = get_model_config("dyva_dit_siglip+7b").video_encoder_config()
    alone = get_model_config("dyva_cogvideox+7b").video_encoder_config()
    assert (dit.mode, dit.pool_grid, dit.height, dit.num_frames) == ("release", 0, 448, 2)
    assert (alone.mode, alone.pool_grid, alone.height, alone.num_frames) == ("release", 0, 224, 8)
    config = get_model_config("dyva-wan_siglip+tiny")
    config.video_mode = "release"
    with pytest.raises(ValueError, match="video_mode=release emulates the authors' CogVideoX"):
        config.validate()


@pytest.mark.parametrize("kind", VIDEO_KINDS)
def test_keyframes_change_only_the_generative_stream(kind: str) -> None:
    vlm = build_vlm(f"dyva-{kind}_siglip+tiny")
    backbone = vlm.vision_backbone
    transform = backbone.get_image_transform()
    first, second = _images(2)
    alone = backbone(collate_pixel_values([transform(first)]))
    pair = backbone(collate_pixel_values([transform([first, second])]))
    assert torch.equal(alone["vit"], pair["vit"])
    assert not torch.allclose(alone[kind], pair[kind])
    assert alone[kind].shape == pair[kind].shape == (1, backbone.streams[1].num_tokens, backbone.streams[1].embed_dim)
    with pytest.raises(ValueError, match="at most 4 per sample"):
        transform(_images(5))


@pytest.mark.parametrize("kind", VIDEO_KINDS)
def test_tiny_dyva_trains_under_torchrun_with_the_cache_and_loads_back(
    kind: str, tiny_data_root: Path, tmp_path: Path
) -> None:
    model_type = f"dyva-{kind}_siglip+tiny"
    cache_dir, runs = tmp_path / "cache", tmp_path / "runs"
    common = ["--model.type", model_type, *data_args(tiny_data_root)]

    # The cache, through scripts/cache_features.py's own function (in this process: one rank).
    script = _cache_features_module()
    cfg = draccus.parse(script.CacheFeaturesConfig, args=[*common, "--feature_cache_dir", str(cache_dir),
                                                          "--num_workers", "0", "--log_every_s", "0"])  # fmt: skip
    report = script.cache_features(cfg)
    assert sum(report.encoded.values()) > 0

    result = run_pretrain([*common, *shlex.split(_TRAIN_FLAGS), "--run_root_dir", str(runs), "--run_id", kind,
                           "--feature_cache_dir", str(cache_dir)], nproc=2)  # fmt: skip
    lookups = re.findall(rf"{kind}: (\d+) hits / (\d+) misses", result.stderr)
    assert lookups and all(int(misses) == 0 for _, misses in lookups), result.stderr[-3000:]
    rows = [json.loads(line) for line in (runs / kind / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)

    vlm, again = prismatic.load(runs / kind), prismatic.load(runs / kind)
    image = Image.open(tiny_data_root / "images" / "0.png").convert("RGB")
    sample = vlm.vision_backbone.get_image_transform()(image)
    live = vlm.vision_backbone(collate_pixel_values([sample]))[kind][0]
    cached = FeatureCache.open(cache_dir, vlm.vision_backbone, streams=[kind]).lookup(sample)
    assert kind in cached, f"no cached {kind} features for the sample"
    torch.testing.assert_close(live, cached[kind].to(live.dtype), rtol=0, atol=0)
    prompt = vlm.get_prompt_builder()
    prompt.add_turn("human", "What color is the image?")
    assert vlm.generate(image, prompt.get_prompt(), max_new_tokens=4, do_sample=False) == again.generate(
        image, prompt.get_prompt(), max_new_tokens=4, do_sample=False
    )

    # The evaluation harness scores it like any other model (closed-form VSR items, batched).
    data_root = tmp_path / "eval-data"
    write_vsr_raw(data_root, count=4)
    fingerprint = fingerprint_directory(runs / kind, str(runs / kind))
    metrics, predictions = run_family(VSR(strict_counts=False), vlm, fingerprint, data_root, tmp_path / "results")
    assert len(predictions) == 4 and 0 <= metrics["accuracy__VSR-ExactMatch"] <= 100


def test_the_authors_dev_layout_loads_as_trained(tmp_path: Path) -> None:
    """A dev-branch checkpoint (released layout: config.json + latest-checkpoint.pt, projector keys with torch.compile's
    prefix, the CogVideoX stream under the projector's `svd_projector_base`) loads into the release-mode encoder."""
    trained = build_vlm("dyva_dit_siglip+tiny")
    with torch.no_grad():
        for param in trained.projector.parameters():  # not the init: the load must bring these exact values
            param.add_(torch.randn_like(param) * 0.01)
    state = trained.state_dict()
    projector = {f"_orig_mod.{k.removeprefix('projector.')}": v for k, v in state.items() if k.startswith("projector.")}
    llm = {k.removeprefix("llm_backbone."): v for k, v in state.items() if k.startswith("llm_backbone.")}
    assert "_orig_mod.svd_projector_base.0.weight" in projector
    folder = tmp_path / "dyva_dit_siglip+tiny"
    (folder / "checkpoints").mkdir(parents=True)
    model = {"model_id": "dyva_dit_siglip+tiny", "vision_backbone_id": "tiny-siglip+cogvideox",
             "llm_backbone_id": "tiny-llama2", "arch_specifier": "no-align+dual"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"model": model}))
    torch.save({"model": {"projector": projector, "llm_backbone": llm}}, folder / "checkpoints" / "latest-checkpoint.pt")

    loaded = prismatic.load(folder)
    encoder = loaded.vision_backbone.generative
    assert (encoder.config.mode, encoder.config.pool_grid, encoder.config.num_frames) == ("release", 0, 2)
    for key, value in trained.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    image = _images(1)[0]
    prompt = loaded.get_prompt_builder()
    prompt.add_turn("human", "What is in the image?")
    assert loaded.generate(image, prompt.get_prompt(), max_new_tokens=5) == trained.generate(
        image, prompt.get_prompt(), max_new_tokens=5
    )


def test_an_unknown_dev_model_id_gets_the_release_encoder_of_its_backbone(monkeypatch, tmp_path: Path) -> None:
    from prismatic import loader

    built = []

    def record(model_cfg, **kwargs):
        built.append(model_cfg)
        raise RuntimeError("built")

    monkeypatch.setattr(loader, "build_vlm", record)
    for backbone in ("dyva_dit_siglip", "dyva_cogvideox"):
        folder = tmp_path / backbone
        (folder / "checkpoints").mkdir(parents=True)
        model = {
            "model_id": f"{backbone}_custom+7b",
            "vision_backbone_id": backbone,
            "llm_backbone_id": "qwen25-7b-chat",
        }
        (folder / "config.json").write_text(json.dumps({"model": model}))
        (folder / "checkpoints" / "latest-checkpoint.pt").write_bytes(b"")
        with pytest.raises(RuntimeError, match="built"):
            prismatic.load(folder, video_prompt_embeds=tmp_path / "prompt.safetensors")
    dit, alone = built
    assert (dit.vision_backbone_id, dit.video_mode, dit.video_height, dit.video_num_frames) == (
        "dyva_dit_siglip", "release", 448, 2)  # fmt: skip
    assert (alone.video_mode, alone.video_height, alone.video_num_frames, alone.video_pool_grid) == (
        "release", 224, 8, 0)  # fmt: skip
    assert dit.video_prompt_embeds == str(tmp_path / "prompt.safetensors")
    with pytest.raises(ValueError, match="video_model_id configures a video-model stream"):
        loader.WeightSources(video_model_id="x").apply(get_model_config("dyva_siglip+tiny"))


# 7B entries: 256 SigLIP tokens + the video stream (pipeline mode: 7 x 7 per latent token frame; CogVideoX-1.5 has 4
# token frames at T = 8, Wan and LTX 8; release mode: 784 raw tokens of block 21).
_SEVEN_B_TOKENS = {"dyva-cogvideox_siglip+7b": 256 + 196, "dyva-wan_siglip+7b": 256 + 392, "dyva-ltx_siglip+7b": 648,
                   "dyva-cogvideox+7b": 196, "dyva-wan+7b": 392, "dyva-ltx+7b": 392, "dyva_dit_siglip+7b": 256 + 784,
                   "dyva_cogvideox+7b": 784}  # fmt: skip


@pytest.mark.parametrize("model_id", sorted(_SEVEN_B_TOKENS))
def test_the_7b_zoo_models_build_on_meta_with_their_token_counts(model_id: str) -> None:
    with torch.device("meta"):
        vlm = build_vlm(model_id, load_weights=False)
    assert vlm.num_visual_tokens == _SEVEN_B_TOKENS[model_id]
    counts = vlm.parameter_counts()
    assert 6.5e9 < counts["llm_backbone"] < 7e9 and counts["vision_backbone"] > 1e9
    if model_id == "dyva_dit_siglip+7b":  # the dev branch's projector: 3072 -> 12288 -> 4096 beside SigLIP's
        assert counts["projector"] == 129_069_568  # 129.1M: 3072-wide stream, 1152-wide SigLIP, d = 4096
