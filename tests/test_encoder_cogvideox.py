"""The CogVideoX encoder against diffusers' own `CogVideoXImageToVideoPipeline` (its first transformer call, hooked),
for 1.5-style and 1.0-style tiny twins saved as pipeline directories, plus its contracts: the tap, determinism and
batch invariance, keyframe slots, release mode, the noised-image query, loading errors, the empty-prompt embedding,
and the real architecture's sizes on the meta device. No network.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from prismatic.models.backbones.vision.base_vision import collate_pixel_values
from prismatic.models.backbones.vision.cogvideox import (
    COGVIDEOX15_TRANSFORMER,
    CogVideoXEncoder,
    build_tiny_cogvideox_components,
    keyframe_slots,
    save_cogvideox_components,
)
from prismatic.models.backbones.vision.svd_components import build_tiny_svd_components, save_svd_components
from prismatic.models.backbones.vision.svd_unet import unpack_uint8_frames
from prismatic.models.backbones.vision.video_config import VideoEncoderConfig
from prismatic.models.backbones.vision.video_encoder import DenoiserCall, sample_generators
from prismatic.models.backbones.vision.video_prompt import load_prompt_embedding, save_prompt_embedding

KEY = "cogvideox"
T = 4  # latent frames
TINY = VideoEncoderConfig(tiny=True, height=64, width=64, num_frames=T, pool_grid=4)
LATENT_CHANNELS = 4


class Stop(Exception):
    """Raised by the reference hooks to end the pipeline's run after the tapped block."""


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 48, 3), dtype=np.uint8)) for i in range(5)]


@pytest.fixture(scope="module")
def dir15(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_cogvideox_components(build_tiny_cogvideox_components(0), tmp_path_factory.mktemp("cogvx15")))


@pytest.fixture(scope="module")
def dir10(tmp_path_factory: pytest.TempPathFactory) -> str:
    components = build_tiny_cogvideox_components(0, version="1.0", height=64, width=96)
    return str(save_cogvideox_components(components, tmp_path_factory.mktemp("cogvx10")))


@pytest.fixture(scope="module")
def components():
    return build_tiny_cogvideox_components(0)


def encoder_of(components, **overrides: Any) -> CogVideoXEncoder:
    return CogVideoXEncoder("tiny-cogvideox", replace(TINY, **overrides), components)


def batch_of(encoder: CogVideoXEncoder, samples: list) -> dict[str, torch.Tensor]:
    transform = encoder.get_image_transform()
    return collate_pixel_values([transform(sample) for sample in samples])


def call_of(encoder: CogVideoXEncoder, samples: list) -> DenoiserCall:
    """The encoder's DenoiserCall for a batch, built as `encode` builds it."""
    frames, counts = unpack_uint8_frames(batch_of(encoder, samples), KEY)
    generators = sample_generators(frames, counts, encoder.config.seed)
    return encoder.denoiser_call(frames.float() / 255.0 * 2.0 - 1.0, counts, generators)


def pipeline_first_call(directory: str, encoder: CogVideoXEncoder, image: Image.Image) -> tuple[dict, torch.Tensor]:
    """Run diffusers' pipeline on the encoder's resized image with the encoder's generator and prompt embedding; return
    the kwargs of its first transformer call and the video output of block `tap`."""
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(directory, tokenizer=None, text_encoder=None)
    captured: dict[str, Any] = {}

    def pre_hook(_module, _args, kwargs):
        captured.setdefault("kwargs", kwargs)

    def block_hook(_module, _args, output):
        captured["tokens"] = output[0]
        raise Stop

    pipe.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    pipe.transformer.transformer_blocks[encoder.tap].register_forward_hook(block_hook)
    frames = encoder.get_image_transform()(image)[KEY]
    generator = sample_generators(frames[None], [1], encoder.config.seed)
    with pytest.raises(Stop):
        pipe(image=Image.fromarray(frames[0].permute(1, 2, 0).numpy()), prompt_embeds=encoder.prompt_embeds,
             guidance_scale=1.0, num_frames=4 * (encoder.config.num_frames - 1) + 1, height=encoder.height,
             width=encoder.width,
             generator=generator, output_type="latent")  # fmt: skip
    return captured["kwargs"], captured["tokens"]


def assert_close(actual: Any, expected: Any) -> None:
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_close(a, e)
    elif expected is None:
        assert actual is None
    else:
        torch.testing.assert_close(actual.float(), expected.float(), atol=1e-5, rtol=1e-5)


# 1.5 at an odd T: __call__ pads the latent frames to a multiple of the temporal patch before prepare_latents.
@pytest.mark.parametrize(("version", "frames"), [("1.5", T), ("1.5", 3), ("1.0", T)])
def test_matches_the_diffusers_pipeline_first_call(version: str, frames: int, dir15: str, dir10: str, images) -> None:
    directory = dir15 if version == "1.5" else dir10
    size = {} if version == "1.0" else {"height": 64, "width": 64}  # 1.0: its fixed size (64 x 96 for this twin)
    config = VideoEncoderConfig(tiny=True, model_id=directory, num_frames=frames, pool_grid=0, **size)
    encoder = CogVideoXEncoder.from_config("tiny-cogvideox", config)
    assert encoder.is_v15 == (version == "1.5")
    expected_kwargs, expected_tokens = pipeline_first_call(directory, encoder, images[0])
    call = call_of(encoder, [images[0]])
    for name in ("hidden_states", "encoder_hidden_states", "timestep", "ofs", "image_rotary_emb"):
        assert_close(call.kwargs[name], expected_kwargs[name])
    assert call.kwargs["timestep"].dtype == expected_kwargs["timestep"].dtype
    features = encoder(batch_of(encoder, [images[0]]))[KEY]
    assert features.shape == (1, int(np.prod(encoder.token_grid())), encoder.embed_dim)
    assert_close(features, expected_tokens)


def test_blocks_after_the_tap_never_run(components, images) -> None:
    encoder = encoder_of(components)
    ran: list[str] = []
    later = [*list(encoder.transformer.transformer_blocks)[encoder.tap + 1 :], encoder.transformer.norm_final,
             encoder.transformer.norm_out, encoder.transformer.proj_out]  # fmt: skip
    handles = [m.register_forward_hook(lambda m, a, o: ran.append(type(m).__name__)) for m in later]
    batch = batch_of(encoder, [images[0]])
    before = encoder(batch)[KEY]
    assert ran == [] and len(later) == 4 + 3 - encoder.tap - 1
    for handle in handles:
        handle.remove()
    dropped = encoder_of(build_tiny_cogvideox_components(0))
    dropped.drop_unused_modules()
    assert len(dropped.transformer.transformer_blocks) == dropped.tap + 1
    assert dropped.transformer.proj_out is None and dropped.vae.decoder is None
    torch.testing.assert_close(dropped(batch)[KEY], before, atol=0, rtol=0)


def test_deterministic_batch_invariant_and_content_seeded(components, images) -> None:
    encoder = encoder_of(components)
    alone = encoder(batch_of(encoder, [images[0]]))[KEY]
    assert alone.shape == (1, 2 * 4 * 4, encoder.embed_dim)  # 2 token frames (temporal patch 2) x 4 x 4 pooled
    assert torch.equal(alone, encoder(batch_of(encoder, [images[0]]))[KEY])
    batched = encoder(batch_of(encoder, [images[1], images[0], images[2]]))[KEY]
    torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=1e-5)
    noise = call_of(encoder, images[:2]).kwargs["hidden_states"][:, :, :LATENT_CHANNELS]
    assert not torch.allclose(noise[0], noise[1])
    reseeded = encoder_of(components, seed=1)
    assert not torch.allclose(reseeded(batch_of(reseeded, [images[0]]))[KEY], alone)


def test_keyframes_go_to_their_latent_slot_and_only_the_conditioning_changes(components, images) -> None:
    encoder = encoder_of(components)
    assert keyframe_slots(2, T, "pipeline") == [0, 3] and keyframe_slots(3, T, "pipeline") == [0, 2, 3]
    one = call_of(encoder, [images[0]]).kwargs["hidden_states"]
    two = call_of(encoder, [[images[0], images[1]]]).kwargs["hidden_states"]
    # A new generator (the content hash covers both images), but image 2's draws come after the pipeline's own.
    frames = batch_of(encoder, [[images[0], images[1]]])[KEY]
    generator = sample_generators(frames, [2], encoder.config.seed)[0]
    pixels = frames.float() / 255.0 * 2.0 - 1.0
    noise, conditioning = encoder._prepare_latents(pixels[:, 0], [generator])
    _, keyframe = encoder._prepare_latents(pixels[:, 1], [generator])
    torch.testing.assert_close(two[:, :, :LATENT_CHANNELS], noise, atol=0, rtol=0)
    torch.testing.assert_close(two[0, 3, LATENT_CHANNELS:], keyframe[0, 0], atol=0, rtol=0)
    torch.testing.assert_close(two[:, :3, LATENT_CHANNELS:], conditioning[:, :3], atol=0, rtol=0)
    assert two[0, 3, LATENT_CHANNELS:].any() and not one[0, 3, LATENT_CHANNELS:].any()
    # A padded slot of a shorter sample in the same batch is never used as a keyframe.
    mixed = encoder(batch_of(encoder, [images[:2], images[2]]))[KEY]
    torch.testing.assert_close(mixed[1:], encoder(batch_of(encoder, [images[2]]))[KEY], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=f"at most {T} per sample"):
        encoder.get_image_transform()(images[:1] * (T + 1))


def test_release_mode_call_and_its_slot_overwrite(components, images) -> None:
    release = encoder_of(components, mode="release", num_frames=2, pool_grid=0)
    pipeline = encoder_of(components, num_frames=2, pool_grid=0)
    assert release.get_image_transform().resample == Image.Resampling.BICUBIC
    assert pipeline.get_image_transform().resample == Image.Resampling.LANCZOS
    got, reference = call_of(release, [images[0]]).kwargs, call_of(pipeline, [images[0]]).kwargs
    assert got["image_rotary_emb"] is None and reference["image_rotary_emb"] is not None
    assert got["ofs"].tolist() == [0.0] and reference["ofs"].tolist() == [2.0]
    assert got["timestep"].tolist() == [999] and got["timestep"].dtype == torch.long
    assert release.token_grid() == (1, 4, 4)
    # L = 2, N = 3: slots floor(linspace(0, 1, 3)) = [0, 0, 1]; image 2 overwrites image 1, image 3 goes to slot 1.
    assert keyframe_slots(3, 2, "release") == [0, 0, 1]
    hidden = call_of(release, [images[:3]]).kwargs["hidden_states"]
    frames = batch_of(release, [images[:3]])[KEY]
    generator = sample_generators(frames, [3], release.config.seed)[0]
    pixels = frames.float() / 255.0 * 2.0 - 1.0
    release._prepare_latents(pixels[:, 0], [generator])  # the pipeline's draws come first
    _, keyframes = release._prepare_latents(pixels[0, 1:3], [generator, generator])
    torch.testing.assert_close(hidden[0, :, LATENT_CHANNELS:], keyframes[:, 0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="at most 8 per sample"):
        release.get_image_transform()(images[:1] * 9)
    with pytest.raises(ValueError, match="first-step"):
        encoder_of(components, mode="release", query="noised-image")


def test_noised_image_query_is_the_replicated_latent_through_add_noise(components, images) -> None:
    first = call_of(encoder_of(components), [images[0]]).kwargs
    encoder = encoder_of(components, query="noised-image", timestep=300)
    got = call_of(encoder, [images[0]]).kwargs
    noise, conditioning = first["hidden_states"].split(LATENT_CHANNELS, dim=2)
    alpha = encoder.scheduler.alphas_cumprod[300]
    expected = alpha.sqrt() * conditioning[:, :1] + (1 - alpha).sqrt() * noise
    torch.testing.assert_close(got["hidden_states"][:, :, :LATENT_CHANNELS], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["hidden_states"][:, :, LATENT_CHANNELS:], conditioning, atol=0, rtol=0)
    assert got["timestep"].tolist() == [300] and first["timestep"].tolist() == [999]


def test_bad_directories_and_sizes_are_clear_errors(dir15: str, tmp_path: Path) -> None:
    svd_dir = save_svd_components(build_tiny_svd_components(0, image_size=32), tmp_path / "svd")
    with pytest.raises(ValueError, match=r"StableVideoDiffusionPipeline.*svd"):
        CogVideoXEncoder.from_config("x", replace(TINY, model_id=str(svd_dir)))
    partial = shutil.copytree(dir15, tmp_path / "partial")
    shutil.rmtree(partial / "transformer")
    with pytest.raises(FileNotFoundError, match="no transformer/ folder"):
        CogVideoXEncoder.from_config("x", replace(TINY, model_id=str(partial)))
    fixed = build_tiny_cogvideox_components(0, version="1.0", height=480, width=720)
    with pytest.raises(ValueError, match="exactly 480 x 720"):
        CogVideoXEncoder("x", replace(TINY, height=448, width=448), fixed)
    assert CogVideoXEncoder("x", replace(TINY, height=None, width=None), fixed).token_grid() == (T, 30, 45)
    with pytest.raises(ValueError, match="multiples of 16"):
        encoder_of(build_tiny_cogvideox_components(0), height=72, width=64)


def tiny_text_parts() -> tuple[PreTrainedTokenizerFast, T5EncoderModel]:
    """An in-memory word-level tokenizer ending each text with </s> (as T5's does) and a tiny random T5 encoder."""
    words = ["<pad>", "</s>", "<unk>", "a", "robot", "arm", "picks"]
    vocab = {word: i for i, word in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2)
    return wrapped, T5EncoderModel(config).eval()


def test_empty_prompt_embedding_is_the_pipelines_and_round_trips(tmp_path: Path, images) -> None:
    tokenizer, text_encoder = tiny_text_parts()
    directory = save_cogvideox_components(build_tiny_cogvideox_components(0), tmp_path / "full", tokenizer, text_encoder)
    embedding = CogVideoXEncoder.encode_empty_prompt(str(directory))
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(directory)
    with torch.no_grad():
        expected, _ = pipe.encode_prompt(prompt="", do_classifier_free_guidance=False, max_sequence_length=8,
                                         device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip
    torch.testing.assert_close(embedding.embeds, expected, atol=0, rtol=0)
    assert embedding.embeds.shape == (1, 8, 32) and embedding.attention_mask is None
    assert embedding.provenance["text_encoder"] == "T5EncoderModel" and embedding.provenance["prompt"] == ""
    assert len(embedding.provenance["text_encoder_sha256"]) == 64
    path = save_prompt_embedding(tmp_path / "empty.safetensors", embedding)
    loaded = load_prompt_embedding(path, KEY)
    assert torch.equal(loaded.embeds, embedding.embeds) and loaded.provenance == embedding.provenance
    encoder = CogVideoXEncoder.from_config("x", replace(TINY, model_id=str(directory), prompt_embeds=str(path)))
    assert torch.equal(encoder.prompt_embeds, embedding.embeds)
    assert encoder(batch_of(encoder, [images[0]]))[KEY].isfinite().all()


def test_real_architectures_on_meta() -> None:
    """1.5 at the default 448 x 448, T = 8: 4 x 28 x 28 tokens; the authors' release setting (T = 2): 784; 1.0 at
    480 x 720, T = 8: 8 x 30 x 45."""
    config = VideoEncoderConfig(num_frames=8)
    with torch.device("meta"):
        encoder = CogVideoXEncoder.from_config("cogvideox", replace(config, pool_grid=0), load_weights=False)
        v10 = {**COGVIDEOX15_TRANSFORMER, "ofs_embed_dim": None, "patch_size_t": None, "sample_height": 60,
               "sample_width": 90, "sample_frames": 49, "use_learned_positional_embeddings": True,
               "patch_bias": True}  # fmt: skip
        transformer10 = CogVideoXTransformer3DModel(**v10)
    components = encoder.components
    assert round(sum(p.numel() for p in components.transformer.parameters()) / 1e9, 2) == 5.57
    assert round(sum(p.numel() for p in components.vae.parameters()) / 1e6, 1) == 215.6
    assert (encoder.height, encoder.width, encoder.token_grid(), encoder.embed_dim) == (448, 448, (4, 28, 28), 3072)
    assert encoder.tap == 21 and encoder.streams[0].num_tokens == 3136 and encoder.prompt_embeds.shape == (1, 226, 4096)
    assert CogVideoXEncoder("c", config, components, True).streams[0].num_tokens == 4 * 49
    release = CogVideoXEncoder("c", replace(config, mode="release", num_frames=2, pool_grid=0), components, True)
    assert release.streams[0].num_tokens == 784
    v10_components = replace(components, transformer=transformer10)
    v10_encoder = CogVideoXEncoder("c", replace(config, pool_grid=0), v10_components, True)
    assert (v10_encoder.height, v10_encoder.width, v10_encoder.token_grid()) == (480, 720, (8, 30, 45))
