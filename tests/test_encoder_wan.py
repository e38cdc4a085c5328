"""The Wan 2.1 I2V encoder against diffusers' own `WanImageToVideoPipeline` (the first transformer call and the tapped
block's output of a real pipeline run on the same tiny checkpoint), plus its contracts: truncation, determinism and
batch invariance, keyframes, the noised-image query, loading errors, and the empty-prompt embedding.

Tiny random components are saved as a real pipeline directory and loaded back through the real code paths.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from diffusers.pipelines.wan import pipeline_wan_i2v
from PIL import Image
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from prismatic.models.backbones.vision.base_vision import collate_pixel_values
from prismatic.models.backbones.vision.svd_components import build_tiny_svd_components, save_svd_components
from prismatic.models.backbones.vision.svd_unet import unpack_uint8_frames
from prismatic.models.backbones.vision.video_config import VideoEncoderConfig
from prismatic.models.backbones.vision.video_encoder import DenoiserCall, pool_tokens, sample_generators
from prismatic.models.backbones.vision.video_prompt import load_prompt_embedding, save_prompt_embedding
from prismatic.models.backbones.vision.wan import WanEncoder, keyframe_pixel_frames, save_wan_components

CONFIG = VideoEncoderConfig(tiny=True, height=64, width=64, num_frames=4, pool_grid=4)
LATENT_CHANNELS = 4  # the tiny VAE's; the transformer input is [noise C | mask 4 | condition C]


class StopPipeline(Exception):
    pass


def scene(seed: int, size: int = 80) -> Image.Image:
    """A random RGB image (not at the encoder's size, so the transform's resize is part of every test)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def pixel_values(encoder: WanEncoder, samples: list[list[Image.Image]]) -> dict[str, torch.Tensor]:
    transform = encoder.get_image_transform()
    return collate_pixel_values([transform(images) for images in samples])


def denoiser_call(encoder: WanEncoder, values: dict[str, torch.Tensor], generators=None) -> DenoiserCall:
    """The encoder's DenoiserCall for a batch, with the per-sample generators `encode` uses (or the given ones)."""
    frames, counts = unpack_uint8_frames(values, encoder.stream_name)
    generators = generators or sample_generators(frames, counts, encoder.config.seed)
    return encoder.denoiser_call(frames.float() / 255.0 * 2.0 - 1.0, counts, generators)


def as_pil(frame: torch.Tensor) -> Image.Image:
    return Image.fromarray(frame.permute(1, 2, 0).numpy())


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_wan_components(WanEncoder.build_tiny_components(seed=0), tmp_path_factory.mktemp("tiny-wan"))


@pytest.fixture(scope="module")
def encoder(wan_dir: Path) -> WanEncoder:
    return WanEncoder.from_config("tiny-wan", replace(CONFIG, model_id=str(wan_dir))).requires_grad_(False)


@pytest.fixture(scope="module")
def pipe(wan_dir: Path) -> WanImageToVideoPipeline:
    pipeline = WanImageToVideoPipeline.from_pretrained(wan_dir, tokenizer=None, text_encoder=None)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run_pipeline(pipe: WanImageToVideoPipeline, encoder: WanEncoder, images: list[Image.Image]) -> dict[str, Any]:
    """Run diffusers' pipeline on the encoder's uint8 frames (K = 2: as `last_image`) until block `tap` has run (or,
    for K = 2, until the transformer is called: the I2V embedder cannot take the two images' CLIP tokens)."""
    frames = encoder.get_image_transform()(images)["wan"]
    captured: dict[str, Any] = {}

    def take_kwargs(_module, _args, kwargs):
        captured["kwargs"] = kwargs
        if len(images) == 2:
            raise StopPipeline

    def take_block(_module, _args, output):
        captured["block"] = output
        raise StopPipeline

    generator = sample_generators(frames[None], [len(images)], encoder.config.seed)[0]
    handles = [
        pipe.transformer.register_forward_pre_hook(take_kwargs, with_kwargs=True),
        pipe.transformer.blocks[encoder.tap].register_forward_hook(take_block),
    ]
    try:
        with pytest.raises(StopPipeline):
            pipe(
                image=as_pil(frames[0]),
                last_image=as_pil(frames[1]) if len(images) == 2 else None,
                prompt_embeds=encoder.prompt_embeds.clone(),
                guidance_scale=1.0,
                height=encoder.height,
                width=encoder.width,
                num_frames=encoder.pixel_frames,
                generator=generator,
                output_type="latent",
            )
    finally:
        for handle in handles:
            handle.remove()
    return captured


@pytest.fixture(scope="module")
def one(encoder: WanEncoder) -> SimpleNamespace:
    """One image's pixel values and DenoiserCall (VAE encodes dominate the CPU time: tests share this one)."""
    values = pixel_values(encoder, [[scene(1)]])
    return SimpleNamespace(values=values, call=denoiser_call(encoder, values))


# === 0. Components ===
def test_tiny_components_and_the_real_architecture_on_meta() -> None:
    state = torch.random.get_rng_state()
    tiny = WanEncoder.build_tiny_components(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded on a forked RNG
    config = tiny.transformer.config
    assert [type(block) for block in tiny.transformer.blocks] == [WanTransformerBlock] * 4
    assert config.in_channels == 2 * tiny.vae.config.z_dim + 4 and config.image_dim == 16 and config.added_kv_proj_dim
    with torch.device("meta"):
        real = WanEncoder.from_config("wan", VideoEncoderConfig(num_frames=8), load_weights=False)
    config = real.transformer.config
    assert (config.in_channels, config.out_channels, config.image_dim, config.added_kv_proj_dim) == (36, 16, 1280, 5120)
    assert (config.num_layers, config.num_attention_heads, config.ffn_dim, config.text_dim) == (40, 40, 13824, 4096)
    assert real.image_encoder.config.hidden_size == 1280 and real.image_encoder.config.num_hidden_layers == 32
    assert real.vae.config.z_dim == 16 and real.prompt_embeds.shape == (1, 512, 4096)
    assert (real.height, real.width, real.token_grid(), real.tap) == (448, 448, (8, 28, 28), 20)
    assert real.streams[0].num_tokens == 8 * 7 * 7 and real.embed_dim == 5120  # 6,272 raw tokens pooled to 392


# === 1. Parity with diffusers ===
def test_first_step_matches_the_pipeline(encoder: WanEncoder, pipe: WanImageToVideoPipeline, one) -> None:
    ran = run_pipeline(pipe, encoder, [scene(1)])
    for key in ("hidden_states", "timestep", "encoder_hidden_states", "encoder_hidden_states_image"):
        torch.testing.assert_close(one.call.kwargs[key], ran["kwargs"][key], rtol=1e-5, atol=1e-5, msg=key)
    assert one.call.kwargs["hidden_states"].shape == (1, 2 * LATENT_CHANNELS + 4, 4, 8, 8)
    assert one.call.kwargs["encoder_hidden_states_image"].shape == (1, 17, 16)
    assert one.call.grid == (4, 4, 4)
    torch.testing.assert_close(encoder.run_to_tap(one.call), ran["block"], rtol=1e-5, atol=1e-5)


def test_two_keyframes_match_the_pipeline_last_image(encoder: WanEncoder, pipe: WanImageToVideoPipeline) -> None:
    images = [scene(1), scene(2)]
    call = denoiser_call(encoder, pixel_values(encoder, [images]))
    ran = run_pipeline(pipe, encoder, images)["kwargs"]
    for key in ("hidden_states", "timestep", "encoder_hidden_states"):
        torch.testing.assert_close(call.kwargs[key], ran[key], rtol=1e-5, atol=1e-5, msg=key)
    # The pipeline encodes both images for CLIP (an FLF2V input); the encoder keeps image 1's, the first of them.
    assert ran["encoder_hidden_states_image"].shape[0] == 2
    torch.testing.assert_close(call.kwargs["encoder_hidden_states_image"], ran["encoder_hidden_states_image"][:1])


def test_keyframe_rederivation_equals_the_pipeline_for_one_and_two(encoder: WanEncoder) -> None:
    for count in (1, 2):
        frames = encoder.get_image_transform()([scene(k) for k in range(count)])["wan"]
        keyframes = frames.float() / 255.0 * 2.0 - 1.0
        ours = encoder._keyframe_latents(keyframes, torch.Generator().manual_seed(7))
        theirs = encoder.sample_latents(keyframes, torch.Generator().manual_seed(7))  # the pipeline's prepare_latents
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# === 2. Truncation ===
def test_later_blocks_never_run_and_are_dropped(wan_dir: Path, one) -> None:
    encoder = WanEncoder.from_config("tiny-wan", replace(CONFIG, model_id=str(wan_dir), tap_block=1))
    ran: list[int] = []
    later = [*encoder.transformer.blocks[2:], encoder.transformer.norm_out, encoder.transformer.proj_out]
    handles = [m.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, m in enumerate(later)]
    before = encoder.run_to_tap(one.call)  # the same weights and query as the module's encoder
    for handle in handles:
        handle.remove()
    assert ran == []
    encoder.drop_unused_modules()
    assert len(encoder.transformer.blocks) == 2
    assert encoder.transformer.norm_out is None and encoder.transformer.proj_out is None
    assert encoder.transformer.scale_shift_table is None and encoder.vae.decoder is None
    torch.testing.assert_close(encoder.run_to_tap(one.call), before, rtol=0, atol=0)


# === 3. Randomness ===
def test_deterministic_batch_invariant_and_content_seeded(encoder: WanEncoder, one) -> None:
    alone = encoder(one.values)["wan"]  # encode() end to end, against the shared call computed separately
    torch.testing.assert_close(alone, pool_tokens(encoder.run_to_tap(one.call), one.call.grid, 4), rtol=0, atol=0)
    assert alone.shape == (1, 4 * 4 * 4, 24)
    call = denoiser_call(encoder, pixel_values(encoder, [[scene(4)], [scene(1)], [scene(5)]]))
    torch.testing.assert_close(pool_tokens(encoder.run_to_tap(call), call.grid, 4)[1:2], alone, rtol=1e-5, atol=1e-5)
    noise = call.kwargs["hidden_states"][:, :LATENT_CHANNELS]
    assert not torch.allclose(noise[0], noise[1]) and not torch.allclose(noise[1], noise[2])


# === 4. Keyframes ===
def test_keyframes_change_only_the_conditioning(encoder: WanEncoder, one) -> None:
    # Image 1 alone and with two more keyframes, with the same generator (seeded as for image 1 alone).
    frames, counts = unpack_uint8_frames(one.values, "wan")
    generators = sample_generators(frames, counts, encoder.config.seed)
    three = denoiser_call(encoder, pixel_values(encoder, [[scene(1), scene(8), scene(9)]]), generators)
    for key in ("timestep", "encoder_hidden_states", "encoder_hidden_states_image"):
        torch.testing.assert_close(one.call.kwargs[key], three.kwargs[key], rtol=0, atol=0)
    x1, x3 = one.call.kwargs["hidden_states"], three.kwargs["hidden_states"]
    torch.testing.assert_close(x1[:, :LATENT_CHANNELS], x3[:, :LATENT_CHANNELS], rtol=0, atol=0)  # same noise
    assert not torch.allclose(x1[:, LATENT_CHANNELS + 4 :], x3[:, LATENT_CHANNELS + 4 :])  # condition latents
    # Pixel frames [0, 6, 12] of 13: frame 0 fills latent frame 0's 4 mask channels; frame p >= 1 is mask entry
    # p + 3 of the [4 x frame 0, frames 1..12] sequence, i.e. latent frame (p + 3) // 4, channel (p + 3) % 4.
    assert keyframe_pixel_frames(3, encoder.pixel_frames) == [0, 6, 12]
    expected = torch.zeros(4, 4)  # [mask channel, latent frame]
    expected[:, 0] = 1
    expected[1, 2] = expected[3, 3] = 1
    mask = x3[0, LATENT_CHANNELS : LATENT_CHANNELS + 4, :, 0, 0]
    torch.testing.assert_close(mask, expected, rtol=0, atol=0)
    assert (x3[0, LATENT_CHANNELS : LATENT_CHANNELS + 4] == mask[..., None, None]).all()
    only_first = torch.zeros(4, 4)
    only_first[:, 0] = 1
    torch.testing.assert_close(x1[0, LATENT_CHANNELS : LATENT_CHANNELS + 4, :, 0, 0], only_first, rtol=0, atol=0)


def test_too_many_keyframes_is_a_clear_error(encoder: WanEncoder) -> None:
    with pytest.raises(ValueError, match="at most 4"):
        encoder.get_image_transform()([scene(k) for k in range(5)])
    frames = torch.zeros(1, 5, 3, 64, 64, dtype=torch.uint8)
    with pytest.raises(ValueError, match="at most 4"):
        encoder({"wan": frames})


# === 5. The noised-image query ===
def test_noised_image_query_is_the_stated_formula(wan_dir: Path, one) -> None:
    noised = WanEncoder.from_config("tiny-wan", replace(CONFIG, model_id=str(wan_dir), query="noised-image"))
    query, x, c = denoiser_call(noised, one.values), one.call.kwargs["hidden_states"], LATENT_CHANNELS
    image_latent = x[:, c + 4 :, :1].expand(-1, -1, 4, -1, -1)  # image 1's latent, replicated over T = 4
    s = CONFIG.timestep / 1000
    torch.testing.assert_close(query.kwargs["hidden_states"][:, :c], (1 - s) * image_latent + s * x[:, :c])
    torch.testing.assert_close(query.kwargs["hidden_states"][:, c:], x[:, c:], rtol=0, atol=0)
    assert query.kwargs["timestep"].tolist() == [CONFIG.timestep]
    assert one.call.kwargs["timestep"].tolist() == [999]  # the first of the default 50 flow-matching steps


# === 6. Bad inputs ===
def test_loading_errors_say_what_to_do(wan_dir: Path, tmp_path: Path) -> None:
    svd_dir = save_svd_components(build_tiny_svd_components(seed=0, image_size=32), tmp_path / "svd")
    with pytest.raises(ValueError, match=r"StableVideoDiffusionPipeline.*`svd`"):
        WanEncoder.from_config("tiny-wan", replace(CONFIG, model_id=str(svd_dir)))
    partial = tmp_path / "no-transformer"
    shutil.copytree(wan_dir, partial, ignore=shutil.ignore_patterns("transformer"))
    with pytest.raises(FileNotFoundError, match="transformer/"):
        WanEncoder.from_config("tiny-wan", replace(CONFIG, model_id=str(partial)))
    with pytest.raises(ValueError, match="multiples of 16 x 16"):
        WanEncoder.from_config("tiny-wan", replace(CONFIG, height=72, width=64))


# === 7. The empty prompt ===
def tiny_text_parts(text_dim: int) -> tuple[PreTrainedTokenizerFast, UMT5EncoderModel]:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "robot": 4}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # T5 appends </s>
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=len(vocab),
        d_model=text_dim,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return tokenizer, UMT5EncoderModel(config).eval()


def test_empty_prompt_embedding_is_the_pipelines_and_round_trips(tmp_path: Path, monkeypatch) -> None:
    components = WanEncoder.build_tiny_components(seed=0)
    tokenizer, text_encoder = tiny_text_parts(int(components.transformer.config.text_dim))
    directory = save_wan_components(components, tmp_path / "wan", tokenizer=tokenizer, text_encoder=text_encoder)
    embedding = WanEncoder.encode_empty_prompt(str(directory))

    monkeypatch.setattr(pipeline_wan_i2v, "ftfy", SimpleNamespace(fix_text=lambda text: text), raising=False)
    pipeline = WanImageToVideoPipeline.from_pretrained(directory)
    with torch.no_grad():
        expected, _ = pipeline.encode_prompt(
            prompt="",
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=512,
            device=torch.device("cpu"),
            dtype=torch.float32,
        )
    torch.testing.assert_close(embedding.embeds, expected, rtol=0, atol=0)
    assert embedding.embeds.shape == (1, 512, 16) and embedding.embeds[0, 0].abs().sum() > 0
    assert (embedding.embeds[0, 1:] == 0).all()  # one real token (</s>), zero-padded after it as Wan does
    assert embedding.provenance["text_encoder"] == "UMT5EncoderModel" and embedding.provenance["prompt"] == ""
    assert len(embedding.provenance["text_encoder_sha256"]) == 64

    path = save_prompt_embedding(tmp_path / "wan_prompt.safetensors", embedding)
    loaded = load_prompt_embedding(path, "wan")
    torch.testing.assert_close(loaded.embeds, embedding.embeds, rtol=0, atol=0)
    assert loaded.provenance == embedding.provenance
    encoder = WanEncoder.from_config("tiny-wan", replace(CONFIG, model_id=str(directory), prompt_embeds=str(path)))
    torch.testing.assert_close(encoder.prompt_embeds, embedding.embeds, rtol=0, atol=0)
    assert encoder(pixel_values(encoder, [[scene(1)]]))["wan"].shape == (1, 64, 24)
