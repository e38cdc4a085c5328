"""Benchmark-sized models: our VLMs and their peers built with identical dimensions, plus synthetic batches.

Everything is random-initialised (seeded) from config objects, through the framework's own building blocks (timm ViT
backbone, registered LLM loading path, SVD encoder class), so the benchmarks time the code that trains. `BenchDims`
holds every size; `FULL` is what `make bench` runs (big enough that matrix multiplies dominate on 2 CPU cores, small
enough that the suite ends in minutes), `SMOKE` is for the test suite (seconds).

The peer of our SigLIP encoder is transformers' `SiglipVisionModel` with the same width, depth, heads, MLP, patch and
activation; the peer of our LLM is the same `LlamaConfig` inside `LlavaForConditionalGeneration`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
)

from prismatic.models.backbones.llm.base_llm import LLMBackbone
from prismatic.models.backbones.llm.loading import get_llm_backbone_and_tokenizer
from prismatic.models.backbones.llm.registry import LLM_BACKBONES, LLMSpec, llama2_config
from prismatic.models.backbones.vision.dual import DualStreamBackbone
from prismatic.models.backbones.vision.svd import SVDGenerativeEncoder
from prismatic.models.backbones.vision.svd_components import SVDComponents, clip_image_processor, svd_scheduler
from prismatic.models.backbones.vision.svd_config import SVDEncoderConfig
from prismatic.models.backbones.vision.timm_vit import TimmEncoderSpec, TimmViTBackbone, create_timm_model
from prismatic.models.materialize import get_vlm
from prismatic.models.vlms.prismatic import PrismaticVLM

SEED = 0


@dataclass(frozen=True)
class BenchDims:
    """Every size of the benchmark models and batches.

    `FULL` keeps the FLOP proportions of the real DyVA-7B (448 px SVD, T = 8, Llama-2 7B, ~1,150-token samples), so the
    ratios mean what they would mean at scale: per sample, our SVD features cost ~9% of an LLM train step here (real
    ~8%), the released computation's ~41% (real ~33%), ours / released encoder FLOPs 0.22 (real 0.23); the U-Net down
    path is ~1/3 of a full conditional pass (real 1/3). The SigLIP-shaped ViT is relatively larger than the real one
    (~5% of the LLM step against ~0.4%), which only makes its unused last block easier to see.
    """

    # Static encoder (SigLIP-shaped timm ViT; ours runs depth - 1 blocks)
    image_size: int = 224
    patch_size: int = 14
    vit_width: int = 384
    vit_depth: int = 8
    vit_heads: int = 6
    vit_mlp: int = 1536
    # LLM (Llama-2 family: packaged 32k vocabulary, resized to 32064 rows)
    llm_hidden: int = 512
    llm_intermediate: int = 1376
    llm_layers: int = 8
    llm_heads: int = 8
    # Generative encoder (SVD architecture at reduced width)
    svd_image_size: int = 128
    svd_frames: int = 8
    vae_channels: tuple[int, ...] = (32, 32, 64)
    unet_channels: tuple[int, ...] = (32, 64, 128, 128)
    unet_heads: tuple[int, ...] = (1, 2, 4, 4)
    clip_width: int = 256
    clip_layers: int = 4
    clip_patch: int = 14
    # Batches
    batch_size: int = 2
    text_tokens: int = 64

    @property
    def vit_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


FULL = BenchDims()
SMOKE = BenchDims(image_size=32, patch_size=16, vit_width=32, vit_depth=3, vit_heads=2, vit_mlp=64, llm_hidden=32,
                  llm_intermediate=64, llm_layers=2, llm_heads=2, svd_image_size=32, svd_frames=2, vae_channels=(32, 32),
                  unet_channels=(32, 32, 32, 32), unet_heads=(1, 1, 1, 1), clip_width=16, clip_layers=1, clip_patch=32,
                  batch_size=2, text_tokens=8)  # fmt: skip


def dims_for(smoke: bool) -> BenchDims:
    return SMOKE if smoke else FULL


# === Ours ===
def static_backbone(dims: BenchDims) -> TimmViTBackbone:
    """A SigLIP-shaped timm ViT (no class token, attention-pool head, exact GELU) at the benchmark size."""
    overrides = {"patch_size": dims.patch_size, "embed_dim": dims.vit_width, "depth": dims.vit_depth,
                 "num_heads": dims.vit_heads, "mlp_ratio": dims.vit_mlp / dims.vit_width}  # fmt: skip
    spec = TimmEncoderSpec("vit_so400m_patch14_siglip_224.webli", dims.image_size, "siglip", overrides=overrides,
                           random_init=True, seed=SEED)  # fmt: skip
    return TimmViTBackbone("bench-siglip", spec, "resize-naive", create_timm_model(spec, load_weights=False))


def llm_backbone(dims: BenchDims, max_length: int = 4096) -> LLMBackbone:
    """A Llama-2-family LLM of the benchmark size, loaded through the framework's own path (packaged vocabulary,
    <PAD> + resize to 32064, seeded init). Its registry entry exists only while it is built, so the benchmarks never
    leave an extra id in the process-wide registry."""
    name = f"bench-llama2-{dims.llm_hidden}x{dims.llm_layers}"
    factory = partial(llama2_config, dims.llm_hidden, dims.llm_intermediate, dims.llm_layers, dims.llm_heads)
    LLM_BACKBONES[name] = LLMSpec(None, "llama2", "base", factory, tiny=True)
    try:
        backbone, _ = get_llm_backbone_and_tokenizer(name, llm_max_length=max_length, attn_implementation="sdpa")
    finally:
        del LLM_BACKBONES[name]
    return backbone


def svd_components(dims: BenchDims) -> SVDComponents:
    """The SVD architecture (VAE, spatio-temporal U-Net, CLIP image tower) at reduced width, seeded; full U-Net."""
    vae_factor = 2 ** (len(dims.vae_channels) - 1)
    clip_dim = dims.clip_width
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        vae = AutoencoderKLTemporalDecoder(in_channels=3, out_channels=3,
                                           down_block_types=("DownEncoderBlock2D",) * len(dims.vae_channels),
                                           block_out_channels=dims.vae_channels, layers_per_block=1,
                                           latent_channels=4, sample_size=dims.svd_image_size)  # fmt: skip
        unet = UNetSpatioTemporalConditionModel(
            sample_size=dims.svd_image_size // vae_factor, in_channels=8, out_channels=4,
            block_out_channels=dims.unet_channels, addition_time_embed_dim=32, projection_class_embeddings_input_dim=96,
            layers_per_block=2, cross_attention_dim=clip_dim, num_attention_heads=dims.unet_heads,
            num_frames=dims.svd_frames)  # fmt: skip
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=clip_dim, intermediate_size=4 * clip_dim, num_hidden_layers=dims.clip_layers,
            num_attention_heads=max(clip_dim // 64, 1), image_size=224, patch_size=dims.clip_patch,
            projection_dim=clip_dim))  # fmt: skip
    for module in (vae, unet, clip):
        module.eval()
    return SVDComponents(vae, unet, clip, clip_image_processor(), svd_scheduler())


def svd_encoder_tokens(dims: BenchDims) -> int:
    """T frame slots x the U-Net's last-down-block grid (VAE then 3 U-Net downsamplers)."""
    grid = dims.svd_image_size // 2 ** (len(dims.vae_channels) - 1) // 8
    return dims.svd_frames * grid * grid


def svd_config(dims: BenchDims) -> SVDEncoderConfig:
    return SVDEncoderConfig(model_id=None, image_size=dims.svd_image_size, num_frames=dims.svd_frames)


def svd_encoder(dims: BenchDims) -> SVDGenerativeEncoder:
    """Our release-mode encoder (pre-mid tap, mid/up blocks and VAE decoder dropped, as `get_vision_backbone...`)."""
    components = svd_components(dims)
    components.vae.decoder = None
    encoder = SVDGenerativeEncoder("bench-svd", svd_config(dims), components)
    encoder.drop_unused_modules()
    return encoder


def siglip_vlm(dims: BenchDims) -> PrismaticVLM:
    """Prism-style SigLIP-only VLM; `gelu-mlp` is Llava's projector shape (C -> d -> d)."""
    vlm = get_vlm("bench-prism-siglip", "no-align+gelu-mlp", static_backbone(dims), llm_backbone(dims))
    vlm.freeze_backbones("finetune")
    return vlm


def dyva_vlm(dims: BenchDims) -> PrismaticVLM:
    """DyVA: SigLIP + SVD (release mode), the released dual projector, the same LLM."""
    backbone = DualStreamBackbone("bench-siglip+svd", static_backbone(dims), svd_encoder(dims))
    vlm = get_vlm("bench-dyva", "no-align+dual", backbone, llm_backbone(dims))
    vlm.freeze_backbones("finetune")
    return vlm


# === Peer ===
IMAGE_TOKEN_ID = 32063  # an unused row of the resized 32064-row vocabulary


def llava_peer(dims: BenchDims, llm: LLMBackbone) -> LlavaForConditionalGeneration:
    """`LlavaForConditionalGeneration` with our ViT's dimensions (SigLIP tower incl. post-norm and pooling head, as
    transformers builds it) and our LLM's config; feature layer -2, all patch tokens ('full'); vision tower frozen."""
    vision = SiglipVisionConfig(hidden_size=dims.vit_width, intermediate_size=dims.vit_mlp,
                                num_hidden_layers=dims.vit_depth, num_attention_heads=dims.vit_heads,
                                image_size=dims.image_size, patch_size=dims.patch_size, hidden_act="gelu",
                                layer_norm_eps=1e-6)  # fmt: skip
    text = replace_config(llm.llm.config)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                         vision_feature_layer=-2, vision_feature_select_strategy="full", projector_hidden_act="gelu",
                         tie_word_embeddings=False)  # fmt: skip
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.requires_grad_(False)
    return model


def replace_config(config: Any) -> Any:
    """A copy of an HF config (the peer must not share a mutable config object with our model)."""
    return type(config).from_dict(config.to_dict())


def with_dims(dims: BenchDims, **changes: Any) -> BenchDims:
    return replace(dims, **changes)
