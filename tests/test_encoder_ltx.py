"""The LTX-Video generative encoder against diffusers' own `LTXImageToVideoPipeline`, on tiny twins (no network).

A tiny pipeline directory (random transformer and VAE with the real block structure, a one-layer T5 and an in-memory
word-level tokenizer) is saved once and loaded back both by the encoder and by diffusers; the reference is the
pipeline's own `__call__`, stopped by a hook after the tapped block of its first denoising step.
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
from diffusers import LTXImageToVideoPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from prismatic.models.backbones.vision.base_vision import collate_pixel_values
from prismatic.models.backbones.vision.ltx import LTXVideoEncoder, build_tiny_ltx_components, save_ltx_components
from prismatic.models.backbones.vision.svd_components import build_tiny_svd_components, save_svd_components
from prismatic.models.backbones.vision.video_config import VideoEncoderConfig
from prismatic.models.backbones.vision.video_encoder import TapReached, pool_tokens, sample_generators
from prismatic.models.backbones.vision.video_prompt import load_prompt_embedding, save_prompt_embedding

SIZE, T, GRID = 64, 4, 4  # tiny: 8x spatial VAE -> 8 x 8 tokens per latent frame, pooled to 4 x 4
CONFIG = VideoEncoderConfig(tiny=True, height=SIZE, width=SIZE, num_frames=T, pool_grid=GRID)


def tiny_text_encoder() -> tuple[T5EncoderModel, PreTrainedTokenizerFast]:
    """A one-layer T5 (width 16 = the tiny transformer's caption channels) and a word-level tokenizer that, like T5's,
    appends the EOS token."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "ball": 4, "falls": 5}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    backend.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=128
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        config = T5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        text_encoder = T5EncoderModel(config).eval()
    return text_encoder, tokenizer


@pytest.fixture(scope="module")
def ltx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-ltx")
    text_encoder, tokenizer = tiny_text_encoder()
    save_ltx_components(build_tiny_ltx_components(seed=0), directory, text_encoder, tokenizer)
    return directory


@pytest.fixture(scope="module")
def prompt_file(ltx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ltx-prompt") / "empty.safetensors"
    return save_prompt_embedding(path, LTXVideoEncoder.encode_empty_prompt(str(ltx_dir)))


@pytest.fixture(scope="module")
def pipe(ltx_dir: Path) -> LTXImageToVideoPipeline:
    """The reference: diffusers' own pipeline, loaded independently of the encoder's loading code."""
    pipeline = LTXImageToVideoPipeline.from_pretrained(ltx_dir)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def make_encoder(ltx_dir: Path, prompt_file: Path, **overrides: Any) -> LTXVideoEncoder:
    config = replace(CONFIG, model_id=str(ltx_dir), prompt_embeds=str(prompt_file), **overrides)
    return LTXVideoEncoder.from_config("tiny-ltx", config)


@pytest.fixture(scope="module")
def encoder(ltx_dir: Path, prompt_file: Path) -> LTXVideoEncoder:
    return make_encoder(ltx_dir, prompt_file)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(40, 56), (64, 48), (37, 37), (50, 70), (64, 64)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def batch_of(encoder: LTXVideoEncoder, samples: list) -> dict[str, torch.Tensor]:
    transform = encoder.get_image_transform()
    return collate_pixel_values([transform(sample) for sample in samples])


def to_pixels(frames: torch.Tensor) -> torch.Tensor:
    return frames.float() / 255.0 * 2.0 - 1.0


def fixed_generators(count: int, seed: int = 123) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + b) for b in range(count)]


def pipeline_first_step(pipe: LTXImageToVideoPipeline, encoder: LTXVideoEncoder, frames: torch.Tensor):
    """Run the pipeline on one uint8 frame [3, H, W] with the encoder's generator for it; return the transformer's
    first-call kwargs and block `tap`'s output."""
    image = Image.fromarray(frames.permute(1, 2, 0).numpy())
    generator = sample_generators(frames[None, None], [1], encoder.config.seed)[0]
    captured: dict[str, Any] = {}

    def capture_kwargs(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        captured.setdefault("kwargs", kwargs)

    def stop(_module: Any, _inputs: Any, output: Any) -> None:
        raise TapReached(output)

    hooks = [pipe.transformer.register_forward_pre_hook(capture_kwargs, with_kwargs=True),
             pipe.transformer.transformer_blocks[encoder.tap].register_forward_hook(stop)]  # fmt: skip
    try:
        pipe(image=image, prompt_embeds=encoder.prompt.embeds, prompt_attention_mask=encoder.prompt.attention_mask,
             guidance_scale=1.0, height=encoder.height, width=encoder.width, num_frames=encoder.pixel_frames,
             generator=generator, output_type="latent")  # fmt: skip
    except TapReached as reached:
        return captured["kwargs"], reached.output
    finally:
        for hook in hooks:
            hook.remove()
    raise AssertionError("the pipeline never reached the tapped block")


def assert_same_kwargs(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert set(theirs) - set(ours) == {"return_dict"}
    for key, value in ours.items():
        if isinstance(value, torch.Tensor):
            assert value.shape == theirs[key].shape, key
            torch.testing.assert_close(value.float(), theirs[key].float(), rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert value == theirs[key], key


def test_first_step_matches_the_diffusers_pipeline(encoder, pipe, images) -> None:
    batch = batch_of(encoder, [images[0]])
    frames = batch["ltx"][0, 0]
    reference_kwargs, reference_block = pipeline_first_step(pipe, encoder, frames)
    generators = sample_generators(batch["ltx"], [1], encoder.config.seed)
    with torch.no_grad():
        call = encoder.denoiser_call(to_pixels(batch["ltx"]), [1], generators)
        tokens = encoder.run_to_tap(call)
        features = encoder(batch)["ltx"]
    assert_same_kwargs(call.kwargs, reference_kwargs)
    assert call.kwargs["timestep"].max() == 1000.0  # sigma 1 stays 1 under the shift and the terminal stretch
    assert call.kwargs["encoder_attention_mask"].sum() == 1  # the empty prompt: EOS, then masked pads
    torch.testing.assert_close(tokens, reference_block, rtol=1e-5, atol=1e-5)
    assert call.grid == (T, 8, 8) and tokens.shape == (1, T * 64, encoder.embed_dim)
    torch.testing.assert_close(features, pool_tokens(reference_block, call.grid, GRID), rtol=1e-5, atol=1e-5)
    assert encoder.streams[0].num_tokens == features.shape[1] == T * GRID * GRID


def test_blocks_after_the_tap_never_run_and_are_dropped(ltx_dir, prompt_file, images) -> None:
    encoder = make_encoder(ltx_dir, prompt_file, tap_block=1)
    transformer = encoder.transformer
    ran: list[str] = []
    later = [*transformer.transformer_blocks[2:], transformer.norm_out, transformer.proj_out]
    hooks = [module.register_forward_hook(lambda m, i, o: ran.append(type(m).__name__)) for module in later]
    batch = batch_of(encoder, [images[1]])
    with torch.no_grad():
        before = encoder(batch)["ltx"]
    for hook in hooks:
        hook.remove()
    assert ran == []
    encoder.drop_unused_modules()
    assert len(transformer.transformer_blocks) == 2 and encoder.vae.decoder is None
    assert transformer.norm_out is None and transformer.proj_out is None and transformer.scale_shift_table is None
    assert not any(name.startswith(("proj_out", "scale_shift_table")) for name, _ in transformer.named_parameters())
    with torch.no_grad():
        assert torch.equal(encoder(batch)["ltx"], before)


def test_gradients_reach_the_blocks_up_to_the_tap_and_the_vae(ltx_dir, prompt_file, images) -> None:
    encoder = make_encoder(ltx_dir, prompt_file, tap_block=1)
    encoder.requires_grad_(False)
    encoder.transformer.requires_grad_(True)
    encoder.vae.requires_grad_(True)
    encoder(batch_of(encoder, [images[0], images[1:3]]))["ltx"].square().mean().backward()
    used = [p for block in encoder.transformer.transformer_blocks[:2] for p in block.parameters()]
    assert all(p.grad is not None for p in used)
    # The head's shift/scale table is a bare parameter: its unused_module_names entry resolves with get_parameter.
    unused = [p for name in encoder.unused_module_names if not name.endswith("scale_shift_table")
              for p in encoder.get_submodule(name).parameters()]  # fmt: skip
    unused.append(encoder.get_parameter("transformer.scale_shift_table"))
    assert len(unused) > 10 and all(p.grad is None for p in unused)
    assert all(p.grad is not None for p in encoder.vae.encoder.parameters())


def test_deterministic_batch_invariant_and_content_seeded(encoder, images) -> None:
    with torch.no_grad():
        alone = encoder(batch_of(encoder, [images[2]]))["ltx"]
        again = encoder(batch_of(encoder, [images[2]]))["ltx"]
        batched = encoder(batch_of(encoder, [images[0], images[2], images[3]]))["ltx"]
    assert torch.equal(alone, again)
    torch.testing.assert_close(batched[1:2], alone, rtol=1e-5, atol=1e-5)
    batch = batch_of(encoder, [images[0], images[2]])
    call = encoder.denoiser_call(to_pixels(batch["ltx"]), [1, 1], sample_generators(batch["ltx"], [1, 1], 0))
    noise = call.kwargs["hidden_states"][:, 64:]  # latent frames 1.. are pure noise at the first step
    assert not torch.allclose(noise[0], noise[1])
    assert abs(noise.std().item() - 1.0) < 0.1


def test_keyframes_change_only_their_tokens(encoder, images) -> None:
    batch = batch_of(encoder, [images[:3]])
    pixels = to_pixels(batch["ltx"])
    with torch.no_grad():
        single = encoder.denoiser_call(pixels, [1], fixed_generators(1)).kwargs
        double = encoder.denoiser_call(pixels, [2], fixed_generators(1)).kwargs
        triple = encoder.denoiser_call(pixels, [3], fixed_generators(1)).kwargs
        generator = fixed_generators(1)[0]  # replay the draws: image 1's posterior, the noise, then image 2's
        encoder.image_latent(pixels[0, 0], generator)
        randn_tensor((1, 8, T, 8, 8), generator=generator)
        second = encoder.image_latent(pixels[0, 1], generator)
    per_frame = 64  # slots: K=2 -> [0, 3]; K=3 -> [0, 2, 3] (round(1.5) = 2)
    for kwargs, slots in ((double, (3,)), (triple, (2, 3))):
        changed = torch.zeros(T * per_frame, dtype=torch.bool)
        for slot in slots:
            changed[slot * per_frame : (slot + 1) * per_frame] = True
        assert torch.equal(kwargs["hidden_states"][:, ~changed], single["hidden_states"][:, ~changed])
        assert torch.equal(kwargs["timestep"][:, ~changed], single["timestep"][:, ~changed])
        assert (kwargs["timestep"][:, changed] == 0).all() and (single["timestep"][:, changed] == 1000).all()
    expected = second[0, :, 0].permute(1, 2, 0).reshape(per_frame, -1)  # [C, h, w] -> frame-major tokens
    torch.testing.assert_close(double["hidden_states"][0, 3 * per_frame :], expected)
    with pytest.raises(ValueError, match="at most 4"):
        encoder.get_image_transform()(images[:1] * 5)
    too_many = collate_pixel_values([{"ltx": torch.zeros(5, 3, SIZE, SIZE, dtype=torch.uint8)}])
    with pytest.raises(ValueError, match="at most 4"):
        encoder(too_many)


def test_noised_image_query_is_rectified_flow_at_the_timestep(ltx_dir, prompt_file, images) -> None:
    encoder = make_encoder(ltx_dir, prompt_file, query="noised-image", timestep=300)
    pixels = to_pixels(batch_of(encoder, [images[4]])["ltx"])
    with torch.no_grad():
        kwargs = encoder.denoiser_call(pixels, [1], fixed_generators(1)).kwargs
        generator = fixed_generators(1)[0]
        vae = encoder.vae
        posterior = vae.encode(pixels[0, :1].unsqueeze(2)).latent_dist.sample(generator)
        clean = (posterior - vae.latents_mean.view(1, -1, 1, 1, 1)) / vae.latents_std.view(1, -1, 1, 1, 1)
        noise = torch.randn((1, 8, T, 8, 8), generator=generator)
    video = 0.7 * clean.expand(-1, -1, T, -1, -1) + 0.3 * noise
    expected = video.permute(0, 2, 3, 4, 1).reshape(1, T * 64, 8)  # frame-major tokens
    torch.testing.assert_close(kwargs["hidden_states"], expected, rtol=1e-5, atol=1e-5)
    assert kwargs["timestep"].shape == (1, T * 64) and (kwargs["timestep"] == 300).all()


def test_bad_inputs_raise_clear_errors(ltx_dir, prompt_file, tmp_path) -> None:
    svd_dir = save_svd_components(build_tiny_svd_components(seed=0, image_size=32), tmp_path / "svd")
    with pytest.raises(ValueError, match=r"StableVideoDiffusionPipeline.*LTXImageToVideoPipeline or LTXPipeline"):
        LTXVideoEncoder.from_config("tiny-ltx", replace(CONFIG, model_id=str(svd_dir)))
    broken = shutil.copytree(ltx_dir, tmp_path / "no-transformer", ignore=shutil.ignore_patterns("transformer"))
    with pytest.raises(FileNotFoundError, match="transformer/"):
        LTXVideoEncoder.from_config("tiny-ltx", replace(CONFIG, model_id=str(broken)))
    with pytest.raises(ValueError, match="multiples of 8"):
        make_encoder(ltx_dir, prompt_file, height=60, width=64)
    with pytest.raises(ValueError, match="no release-mode"):
        make_encoder(ltx_dir, prompt_file, mode="release")


def test_empty_prompt_is_the_pipelines_and_round_trips(ltx_dir, prompt_file, pipe) -> None:
    embedding = LTXVideoEncoder.encode_empty_prompt(str(ltx_dir))
    with torch.no_grad():
        embeds, mask, _, _ = pipe.encode_prompt(
            prompt="", do_classifier_free_guidance=False, num_videos_per_prompt=1, max_sequence_length=128,
            device=torch.device("cpu"), dtype=torch.float32,
        )  # fmt: skip
    assert torch.equal(embedding.embeds, embeds) and embedding.embeds.shape == (1, 128, 16)
    assert torch.equal(embedding.attention_mask.bool(), mask) and int(mask.sum()) == 1
    assert embedding.provenance["text_encoder"] == "T5EncoderModel" and embedding.provenance["prompt"] == ""
    loaded = load_prompt_embedding(prompt_file, "ltx")
    assert torch.equal(loaded.embeds, embedding.embeds) and torch.equal(loaded.attention_mask, embedding.attention_mask)
    assert loaded.provenance == embedding.provenance and loaded.sha256 == embedding.sha256


def test_real_architecture_on_meta() -> None:
    with torch.device("meta"):
        encoder = LTXVideoEncoder.from_config("ltx", VideoEncoderConfig(), load_weights=False)
    components = encoder.components
    assert encoder.prompt_embeds.shape == (1, 128, 4096) and encoder.prompt_attention_mask.shape == (1, 128)
    assert encoder.num_blocks == 28 and encoder.tap == 14 and encoder.embed_dim == 2048
    assert encoder.spatial_factor == 32 and encoder.pixel_frames == 57 and (encoder.height, encoder.width) == (448, 448)
    assert encoder.token_grid() == (8, 14, 14) and encoder.streams[0].num_tokens == 8 * 7 * 7
    parameters = sum(p.numel() for p in components.transformer.parameters())
    assert 1.8e9 < parameters < 2.1e9


def test_the_script_writes_the_embedding_where_the_encoder_finds_it(ltx_dir: Path, tmp_path: Path) -> None:
    """scripts/encode_empty_prompt.py on a local directory: the file lands in it, and an encoder given only the
    directory (no --model.video_prompt_embeds) conditions on it."""
    import importlib.util
    import shutil

    directory = tmp_path / "ltx"
    shutil.copytree(ltx_dir, directory)
    script_path = Path(__file__).resolve().parents[1] / "scripts" / "encode_empty_prompt.py"
    spec = importlib.util.spec_from_file_location("encode_empty_prompt", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    written = script.main(["--family", "ltx", "--model_id", str(directory)])
    assert written == directory / "empty_prompt_embeds.safetensors"
    encoder = LTXVideoEncoder.from_config("ltx", replace(CONFIG, model_id=str(directory)))
    assert torch.equal(encoder.prompt_embeds, LTXVideoEncoder.encode_empty_prompt(str(directory)).embeds)
    with pytest.raises(ValueError, match="pass --out FILE"):
        script.main(["--family", "ltx", "--model_id", "Lightricks/LTX-Video"])
    with pytest.raises(FileNotFoundError, match=r"encode_empty_prompt\.py --family ltx"):
        LTXVideoEncoder.from_config("ltx", replace(CONFIG, model_id=str(ltx_dir), tiny=False))


def test_a_run_carries_its_prompt_embedding_and_loads_without_the_original(
    ltx_dir: Path, prompt_file: Path, tmp_path: Path
) -> None:
    """scripts/pretrain.py copies the --model.video_prompt_embeds file into the run directory and its config names the
    copy: the run loads (and computes the same features) after the original file is gone."""
    import importlib.util
    import json
    import shutil

    import draccus
    from helpers import small_run_args, write_llava_dataset

    import prismatic
    from prismatic.conf.pretrain import PretrainConfig

    original = tmp_path / "prompts" / "ltx-empty.safetensors"
    original.parent.mkdir()
    shutil.copyfile(prompt_file, original)
    data = write_llava_dataset(tmp_path / "data", num_images=4, num_text=0)
    args = small_run_args(data, tmp_path / "runs", "ltx", 1, "--model.video_model_id", str(ltx_dir),
                          "--model.video_prompt_embeds", str(original), model_type="dyva-ltx_siglip+tiny")  # fmt: skip
    script_path = Path(__file__).resolve().parents[1] / "scripts" / "pretrain.py"
    spec = importlib.util.spec_from_file_location("pretrain_script", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run_dir = script.pretrain(draccus.parse(PretrainConfig, args=args))

    copy = run_dir / "empty_prompt_embeds.safetensors"
    assert copy.read_bytes() == original.read_bytes()
    assert json.loads((run_dir / "config.json").read_text())["model"]["video_prompt_embeds"] == str(copy)
    original.unlink()
    vlm = prismatic.load(run_dir)
    assert torch.equal(vlm.vision_backbone.generative.prompt_embeds, load_prompt_embedding(copy, "ltx").embeds)
