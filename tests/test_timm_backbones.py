"""Tests of the static timm ViT encoders: shapes, feature layer, gradients, transforms, errors, local-dir loading.

Tiny twins run for real on CPU; the real SigLIP / CLIP / DINOv2 ids are built on the `meta` device without weights.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub miss would otherwise retry for ~50 s

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import timm.models
import torch
from PIL import Image
from timm.layers import QuickGELU
from timm.models.vision_transformer import Block

from prismatic.models.backbones.vision.base_vision import collate_pixel_values
from prismatic.models.backbones.vision.timm_vit import (
    STATIC_ENCODERS,
    DinoSigLIPBackbone,
    TimmViTBackbone,
    build_dinosiglip_backbone,
    build_static_backbone,
    build_timm_backbone,
    create_timm_model,
)

TINY_IDS = ["tiny-siglip", "tiny-clip", "tiny-dinov2"]
# Prefix tokens of each family, written out independently of timm's `num_prefix_tokens`: CLS for CLIP, CLS + 4
# registers for DINOv2-reg4, none for SigLIP.
PREFIX_TOKENS = {"tiny-siglip": 0, "tiny-clip": 1, "tiny-dinov2": 5}


def random_image(width: int = 80, height: int = 48, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def batch_for(backbone, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    transform = backbone.get_image_transform()
    return collate_pixel_values([transform(image) for image in images])


def reference_features(full_model: torch.nn.Module, pixels: torch.Tensor, prefix: int) -> torch.Tensor:
    """Output of block depth-2 of the untruncated model, captured with a hook, prefix tokens dropped by hand."""
    captured: list[torch.Tensor] = []
    handle = full_model.blocks[len(full_model.blocks) - 2].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        full_model(pixels)
    handle.remove()
    return captured[0][:, prefix:]


def perturbed_full_model(vision_backbone_id: str, seed: int) -> torch.nn.Module:
    """A full tiny timm model whose weights differ from the registry's seeded init (so loading is observable)."""
    model = create_timm_model(STATIC_ENCODERS[vision_backbone_id])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model


# ---------------------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("vision_backbone_id", [*TINY_IDS, "tiny-dinosiglip"])
def test_tiny_shapes_match_stream_specs(vision_backbone_id: str) -> None:
    backbone = build_static_backbone(vision_backbone_id, "resize-naive")
    (stream,) = backbone.streams
    expected_width = 128 if vision_backbone_id == "tiny-dinosiglip" else 64
    assert (stream.name, stream.embed_dim, stream.num_tokens) == ("vit", expected_width, 16)
    assert backbone.num_visual_tokens == 16
    pixels = batch_for(backbone, [random_image(seed=1), random_image(seed=2)])
    with torch.no_grad():
        out = backbone(pixels)
    assert list(out) == ["vit"]
    assert out["vit"].shape == (2, 16, expected_width)
    assert torch.isfinite(out["vit"]).all()
    assert set(backbone.fsdp_wrap_modules) == {Block}


@pytest.mark.parametrize(
    ("vision_backbone_id", "width", "num_tokens", "image_size", "depth"),
    [
        ("siglip-vit-so400m", 1152, 256, 224, 26),
        ("siglip-vit-so400m-384px", 1152, 729, 384, 26),
        ("clip-vit-l", 1024, 256, 224, 23),
        ("clip-vit-l-336px", 1024, 576, 336, 23),
        ("dinov2-vit-l", 1024, 256, 224, 23),
    ],
)
def test_real_ids_build_on_meta(vision_backbone_id: str, width: int, num_tokens: int, image_size: int, depth: int):
    with torch.device("meta"):
        backbone = build_timm_backbone(vision_backbone_id, "resize-naive", load_weights=False)
        out = backbone({backbone.spec.pixel_key: torch.empty(2, 3, image_size, image_size)})
    assert backbone.streams[0].embed_dim == width and backbone.streams[0].num_tokens == num_tokens
    assert out["vit"].shape == (2, num_tokens, width)
    assert len(backbone.featurizer.blocks) == depth  # the last block is gone
    is_clip = vision_backbone_id.startswith("clip")
    assert isinstance(backbone.featurizer.blocks[0].mlp.act, QuickGELU) == is_clip
    pixels = backbone.get_image_transform()(random_image())[backbone.spec.pixel_key]
    assert pixels.shape == (3, image_size, image_size)


def test_real_dinosiglip_on_meta() -> None:
    with torch.device("meta"):
        backbone = build_dinosiglip_backbone("dinosiglip-vit-so-224px", "resize-naive", load_weights=False)
        pixels = {"dino": torch.empty(1, 3, 224, 224), "siglip": torch.empty(1, 3, 224, 224)}
        out = backbone(pixels)
    assert backbone.streams[0].embed_dim == 2176 and backbone.streams[0].num_tokens == 256
    assert out["vit"].shape == (1, 256, 2176)
    assert set(backbone.get_image_transform()(random_image())) == {"dino", "siglip"}


def test_truncated_siglip_so400m_parameter_count() -> None:
    with torch.device("meta"):
        backbone = build_timm_backbone("siglip-vit-so400m", "resize-naive", load_weights=False)
    dim, hidden, patch, tokens, blocks = 1152, int(1152 * 3.7362), 14, 256, 26
    norms, qkv, proj = 2 * 2 * dim, dim * 3 * dim + 3 * dim, dim * dim + dim
    mlp = dim * hidden + hidden + hidden * dim + dim
    per_block = norms + qkv + proj + mlp
    expected = 3 * patch * patch * dim + dim + tokens * dim + blocks * per_block  # patch embed, pos embed, blocks
    assert expected == 397_200_544
    assert sum(p.numel() for p in backbone.parameters()) == expected
    names = {name for name, _ in backbone.named_parameters()}
    assert not any(name.split(".")[1] in {"norm", "fc_norm", "attn_pool", "head"} for name in names)


# ------------------------------------------------------------------------------------------------- feature layer


@pytest.mark.parametrize("vision_backbone_id", TINY_IDS)
def test_features_are_second_to_last_block_without_norm(vision_backbone_id: str) -> None:
    spec = STATIC_ENCODERS[vision_backbone_id]
    full = create_timm_model(spec)
    reference_model = copy.deepcopy(full).eval()
    backbone = TimmViTBackbone(vision_backbone_id, spec, "resize-naive", full).eval()
    pixels = batch_for(backbone, [random_image(seed=3), random_image(seed=4)])[spec.pixel_key]

    with torch.no_grad():
        ours = backbone({spec.pixel_key: pixels})["vit"]
        (timm_reference,) = reference_model.get_intermediate_layers(pixels, n=[len(reference_model.blocks) - 2])
    prefix = PREFIX_TOKENS[vision_backbone_id]
    torch.testing.assert_close(ours, reference_features(reference_model, pixels, prefix), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, timm_reference, rtol=0, atol=1e-6)

    # The check is discriminative: the last block's output, and the final-normed tokens, are different tensors.
    with torch.no_grad():
        last = reference_model.forward_features(pixels)[:, prefix:]
        (third_to_last,) = reference_model.get_intermediate_layers(pixels, n=[len(reference_model.blocks) - 3])
    assert (ours - last).abs().max() > 1e-3
    assert (ours - third_to_last).abs().max() > 1e-3


@pytest.mark.parametrize("vision_backbone_id", [*TINY_IDS, "tiny-dinosiglip"])
def test_every_parameter_gets_a_gradient(vision_backbone_id: str) -> None:
    backbone = build_static_backbone(vision_backbone_id, "resize-naive")
    pixels = batch_for(backbone, [random_image(seed=5)])
    backbone(pixels)["vit"].square().mean().backward()
    missing = [name for name, p in backbone.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_dinosiglip_concatenates_dino_then_siglip() -> None:
    backbone = build_dinosiglip_backbone("tiny-dinosiglip", "resize-naive")
    assert isinstance(backbone, DinoSigLIPBackbone)
    dino = build_timm_backbone("tiny-dinov2", "resize-naive")
    siglip = build_timm_backbone("tiny-siglip", "resize-naive")
    pixels = batch_for(backbone, [random_image(seed=6)])
    with torch.no_grad():
        fused = backbone(pixels)["vit"]
        expected = torch.cat([dino(pixels)["vit"], siglip(pixels)["vit"]], dim=-1)
    torch.testing.assert_close(fused, expected, rtol=0, atol=0)
    # Each encoder normalises with its own statistics (DINOv2: ImageNet, SigLIP: 0.5 / 0.5).
    assert not torch.equal(pixels["dino"], pixels["siglip"])


def test_tiny_init_is_seeded_and_keeps_global_rng() -> None:
    state = torch.random.get_rng_state()
    first = build_timm_backbone("tiny-siglip", "resize-naive")
    assert torch.equal(torch.random.get_rng_state(), state)
    second = build_timm_backbone("tiny-siglip", "letterbox")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_bf16_model_accepts_fp32_pixels() -> None:
    backbone = build_timm_backbone("tiny-clip", "resize-naive").to(torch.bfloat16)
    with torch.no_grad():
        out = backbone(batch_for(backbone, [random_image()]))["vit"]
    assert out.dtype == torch.bfloat16 and out.shape == (1, 16, 64)


# ---------------------------------------------------------------------------------------------------- transforms


def test_resize_naive_is_a_plain_bicubic_resize_then_normalize() -> None:
    backbone = build_timm_backbone("tiny-clip", "resize-naive")
    image = random_image(width=90, height=40)
    ours = backbone.get_image_transform()(image)["clip"]
    cfg = timm.models.get_pretrained_cfg("vit_large_patch14_clip_224.openai")
    resized = np.asarray(image.resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    mean, std = torch.tensor(cfg.mean)[:, None, None], torch.tensor(cfg.std)[:, None, None]
    expected = (torch.from_numpy(resized).permute(2, 0, 1) - mean) / std
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", ["resize-naive", "resize-crop", "letterbox"])
def test_every_strategy_gives_a_square_float_tensor(strategy: str) -> None:
    backbone = build_static_backbone("tiny-dinosiglip", strategy)
    out = backbone.get_image_transform()(random_image(width=120, height=50))
    for pixels in out.values():
        assert pixels.shape == (3, 64, 64) and pixels.dtype == torch.float32
    assert set(out) == {"dino", "siglip"}


def test_letterbox_pads_the_short_side_with_the_mean_colour() -> None:
    # A 2:1 white image: letterboxed to a square, it occupies the middle half of the rows, full width.
    image = Image.new("RGB", (128, 64), (255, 255, 255))
    backbone = build_timm_backbone("tiny-siglip", "letterbox")
    pixels = backbone.get_image_transform()(image)["siglip"]
    assert pixels.shape == (3, 64, 64)
    white = (1.0 - 0.5) / 0.5  # SigLIP normalises with mean 0.5, std 0.5
    padding = (round(0.5 * 255) / 255 - 0.5) / 0.5
    torch.testing.assert_close(pixels[:, 20:44, :], torch.full((3, 24, 64), white), rtol=0, atol=1e-5)
    torch.testing.assert_close(pixels[:, :12, :], torch.full((3, 12, 64), padding), rtol=0, atol=1e-5)
    torch.testing.assert_close(pixels[:, -12:, :], torch.full((3, 12, 64), padding), rtol=0, atol=1e-5)
    # resize-crop would instead crop the sides and fill the whole square with image content.
    cropped = build_timm_backbone("tiny-siglip", "resize-crop").get_image_transform()(image)["siglip"]
    torch.testing.assert_close(cropped, torch.full((3, 64, 64), white), rtol=0, atol=1e-5)


def test_a_list_of_images_uses_the_first_only() -> None:
    transform = build_static_backbone("tiny-dinosiglip", "resize-naive").get_image_transform()
    first, second = random_image(seed=7), random_image(seed=8)
    from_list, from_first = transform([first, second]), transform(first)
    for key in from_first:
        assert torch.equal(from_list[key], from_first[key])


def test_transform_pickles_for_dataloader_workers() -> None:
    transform = build_timm_backbone("tiny-siglip", "letterbox").get_image_transform()
    image = random_image()
    assert torch.equal(pickle.loads(pickle.dumps(transform))(image)["siglip"], transform(image)["siglip"])


# -------------------------------------------------------------------------------------------------------- errors


def test_errors_say_what_to_do() -> None:
    transform = build_timm_backbone("tiny-siglip", "resize-naive").get_image_transform()
    with pytest.raises(ValueError, match=r"convert\('RGB'\)"):
        transform(random_image().convert("L"))
    with pytest.raises(TypeError, match="PIL"):
        transform(np.zeros((8, 8, 3), dtype=np.uint8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resize-naive"):
        build_timm_backbone("tiny-siglip", "squash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="siglip-vit-so400m"):
        build_timm_backbone("siglip-vit-huge", "resize-naive")
    with pytest.raises(ValueError, match="tiny-dinosiglip"):
        build_static_backbone("nope", "resize-naive")
    with pytest.raises(ValueError, match="build_dinosiglip_backbone"):
        build_timm_backbone("tiny-dinosiglip", "resize-naive")
    with pytest.raises(KeyError, match="get_image_transform"):
        build_timm_backbone("tiny-siglip", "resize-naive")({"dino": torch.zeros(1, 3, 64, 64)})


def test_local_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="save_for_hf"):
        build_timm_backbone("tiny-siglip", "resize-naive", pretrained_path=tmp_path)
    timm.models.save_for_hf(create_timm_model(STATIC_ENCODERS["tiny-clip"]), tmp_path, safe_serialization=True)
    with pytest.raises(ValueError, match="vit_large_patch14_clip_224"):
        build_timm_backbone("tiny-siglip", "resize-naive", pretrained_path=tmp_path)


def test_backbone_rejects_an_already_truncated_model() -> None:
    backbone = build_timm_backbone("tiny-siglip", "resize-naive")
    with pytest.raises(ValueError, match="untruncated"):
        TimmViTBackbone("tiny-siglip", backbone.spec, "resize-naive", backbone.featurizer)


# ----------------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("vision_backbone_id", TINY_IDS)
def test_save_for_hf_round_trip(vision_backbone_id: str, tmp_path: Path) -> None:
    saved = perturbed_full_model(vision_backbone_id, seed=11)
    timm.models.save_for_hf(saved, tmp_path, safe_serialization=True)
    assert {"config.json", "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}

    loaded = build_timm_backbone(vision_backbone_id, "resize-naive", pretrained_path=tmp_path)
    default = build_timm_backbone(vision_backbone_id, "resize-naive")
    pixels = batch_for(loaded, [random_image(seed=9)])
    with torch.no_grad():
        features = loaded(pixels)["vit"]
        default_features = default(pixels)["vit"]
    expected = reference_features(saved.eval(), pixels[loaded.spec.pixel_key], PREFIX_TOKENS[vision_backbone_id])
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
    assert (features - default_features).abs().max() > 1e-3  # the weights really came from the directory


def test_dinosiglip_round_trip(tmp_path: Path) -> None:
    saved = {"dino": perturbed_full_model("tiny-dinov2", seed=12), "siglip": perturbed_full_model("tiny-siglip", 13)}
    for name, model in saved.items():
        timm.models.save_for_hf(model, tmp_path / name, safe_serialization=True)
    backbone = build_dinosiglip_backbone("tiny-dinosiglip", "resize-naive", pretrained_path=tmp_path)
    pixels = batch_for(backbone, [random_image(seed=10)])
    with torch.no_grad():
        features = backbone(pixels)["vit"]
    expected = torch.cat(
        [
            reference_features(saved["dino"].eval(), pixels["dino"], PREFIX_TOKENS["tiny-dinov2"]),
            reference_features(saved["siglip"].eval(), pixels["siglip"], PREFIX_TOKENS["tiny-siglip"]),
        ],
        dim=-1,
    )
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
