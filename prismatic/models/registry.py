"""The model registry: every named VLM (paper models, baselines, ablations, tiny twins) and its recipe.

A model id fixes the vision backbone, the LLM, the arch specifier (stage prefix + projector) and the generative
encoder's options. The authors' spellings resolve through `MODEL_ALIASES`. Training configs (`conf/`) and
`load()` read from here; this is the one place to add a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from prismatic.models.backbones.vision.svd_config import FeatureTap, SVDMode
from prismatic.models.stages import Stage


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    vision_backbone_id: str
    llm_backbone_id: str
    arch_specifier: str
    description: str
    image_resize_strategy: str = "resize-naive"
    num_frames: int = 8
    svd_mode: SVDMode = "release"
    tap: FeatureTap = "pre-mid"
    stage: Stage = Stage.FINETUNE  # the finetune stage's trainable set (the U-Net ablations unfreeze the U-Net)
    paper_reference: str = ""
    # Other `ModelConfig` defaults of this model, e.g. (("video_mode", "release"),) for the authors' CogVideoX ones.
    options: tuple[tuple[str, object], ...] = ()


def _dyva(model_id: str, vision: str, description: str, llm: str = "llama2-7b-pure", **kw) -> ModelSpec:
    arch = kw.pop("arch_specifier", "no-align+dual")
    return ModelSpec(model_id, vision, llm, arch, description, **kw)


_SVD_ONLY = "no-align+fused-gelu-mlp"
_SPECS: list[ModelSpec] = [
    # --- The paper's models (released checkpoints exist for the first two) ---
    _dyva("dyva_siglip+7b", "siglip+svd", "DyVA-7B: SigLIP + SVD (release mode), dual projector, Llama-2 7B (base).",
          paper_reference="Table 2 / Table 3 'SigLIP + SVD, Align x'"),
    _dyva("dyva_siglip_qwen+7b", "siglip+svd", "DyVA-Qwen2.5-7B: SigLIP + SVD, dual projector, Qwen2.5-7B-Instruct.",
          llm="qwen25-7b-chat", paper_reference="Tables 1-2"),
    # --- Baselines (prismatic-style, static encoders only) ---
    ModelSpec("prism_siglip+7b", "siglip-vit-so400m", "llama2-7b-pure", "no-align+fused-gelu-mlp",
              "Prism-SigLIP-7B baseline: SigLIP so400m only, fused GELU MLP, Llama-2 7B.", paper_reference="Table 2"),
    ModelSpec("prism_dinosiglip+7b", "dinosiglip-vit-so-224px", "llama2-7b-pure", "no-align+fused-gelu-mlp",
              "Prism-DinoSigLIP-7B baseline: DINOv2 + SigLIP fused, Llama-2 7B.", paper_reference="Table 2"),
    # --- Encoder ablations (Table 3), each with and without the align stage ---
    _dyva("dyva_clip+7b", "clip+svd", "CLIP-L + SVD, dual projector, Llama-2 7B.", paper_reference="Table 3"),
    _dyva("dyva_dino+7b", "dinov2+svd", "DINOv2-L + SVD, dual projector, Llama-2 7B.", paper_reference="Table 3"),
    _dyva("dyva_dinosiglip+7b", "dinosiglip+svd", "DINO-SigLIP + SVD, dual projector, Llama-2 7B.",
          paper_reference="Table 3"),
    _dyva("dyva-svd+7b", "svd", "SVD-only WorldLM, fused GELU MLP, Llama-2 7B.", arch_specifier=_SVD_ONLY,
          paper_reference="Table 3"),
    _dyva("dyva-vae+7b", "vae-only", "VAE-only ablation (conv stem + fused GELU MLP), Llama-2 7B.",
          arch_specifier=_SVD_ONLY, paper_reference="Table 3"),
    # --- Training ablations ---
    _dyva("dyva-svd-unet+7b", "svd", "SVD-only with a trainable U-Net (lr x 0.2), after alignment.",
          arch_specifier="align+fused-gelu-mlp", stage=Stage.FINETUNE_UNET, paper_reference="Table 3 'U-Net Trainable'"),
    _dyva("dyva-svd-unet-vae+7b", "svd", "SVD-only with trainable U-Net and VAE, after alignment.",
          arch_specifier="align+fused-gelu-mlp", stage=Stage.FINETUNE_UNET_VAE,
          paper_reference="Table 3 'U-Net & VAE Trainable'"),
    _dyva("dyva_siglip-unet+7b", "siglip+svd", "SigLIP + SVD with a trainable U-Net, after alignment.",
          arch_specifier="align+dual", stage=Stage.FINETUNE_UNET, paper_reference="Table 3 'U-Net Trainable'"),
    *(_dyva(f"dyva-svd-f{t}+7b", "svd", f"SVD-only with {t} frame slot(s), two stages.", num_frames=t,
            arch_specifier="align+fused-gelu-mlp", paper_reference="Table 5") for t in (1, 4, 8, 14)),
    _dyva("dyva-svd-postmid+7b", "svd", "SVD-only, features tapped after the mid block.", tap="post-mid",
          arch_specifier="align+fused-gelu-mlp", paper_reference="Table 6"),
    _dyva("dyva_siglip-paper+7b", "siglip+svd", "DyVA-7B computing the paper's equations (clean latent + Euler step).",
          svd_mode="paper", paper_reference="Eq. 2-3"),
    # --- Tiny twins: random tiny backbones with the real vocabularies, for CPU tests and the demo ---
    _dyva("dyva_siglip+tiny", "tiny-siglip+svd", "Tiny DyVA: tiny SigLIP + tiny SVD + tiny Llama-2.", llm="tiny-llama2"),
    _dyva("dyva_siglip_qwen+tiny", "tiny-siglip+svd", "Tiny DyVA-Qwen: tiny SigLIP + tiny SVD + tiny Qwen2.5.",
          llm="tiny-qwen25"),
    ModelSpec("prism_siglip+tiny", "tiny-siglip", "tiny-llama2", "no-align+fused-gelu-mlp",
              "Tiny SigLIP-only baseline with a tiny Llama-2."),
]  # fmt: skip
# Align-stage twins of the Table 3 single-stage models.
_SPECS += [
    ModelSpec(s.model_id.replace("+7b", "-align+7b"), s.vision_backbone_id, s.llm_backbone_id,
              s.arch_specifier.replace("no-align+", "align+"), s.description + " With the LAION-558k align stage.",
              paper_reference="Table 3 'Align v'")
    for s in _SPECS
    if s.model_id in {"dyva_siglip+7b", "dyva_clip+7b", "dyva_dino+7b", "dyva_dinosiglip+7b", "dyva-svd+7b",
                      "dyva-vae+7b"}
]  # fmt: skip


# --- The generative-encoder zoo (docs/encoders.md) ---
# The authors' dev-branch CogVideoX-1.5 models, in the CogVideoX encoder's `release` mode (their computation, made
# deterministic): raw block-21 tokens; beside a ViT 448 px and 2 latent frames (their `num_frames` 8), alone 224 px and
# 8 latent frames (their `num_frames` 32).
_DIT_RELEASE = (("video_mode", "release"), ("video_pool_grid", 0), ("video_height", 448), ("video_width", 448),
                ("video_num_frames", 2))  # fmt: skip
_COGVIDEOX_RELEASE = (("video_mode", "release"), ("video_pool_grid", 0), ("video_height", 224), ("video_width", 224),
                      ("video_num_frames", 8))  # fmt: skip
_VIDEO_NAMES = {"cogvideox": "CogVideoX-1.5-5B-I2V", "wan": "Wan2.1-I2V-14B-480P", "ltx": "LTX-Video 0.9 (2B)"}
_SPECS += [
    _dyva("dyva_dit_siglip+7b", "siglip+cogvideox", "Authors' dev branch: SigLIP + CogVideoX-1.5 block 21 (784 raw "
          "tokens at 448 px), dual projector, Llama-2 7B; release-mode encoder.", options=_DIT_RELEASE),
    _dyva("dyva_dit_siglip_qwen+7b", "siglip+cogvideox", "Authors' dev branch training run: SigLIP + CogVideoX-1.5 "
          "(release mode), dual projector, Qwen2.5-7B-Instruct.", llm="qwen25-7b-chat", options=_DIT_RELEASE),
    _dyva("dyva_cogvideox+7b", "cogvideox", "Authors' dev branch: CogVideoX-1.5 alone at 224 px (784 raw tokens), "
          "fused GELU MLP, Llama-2 7B; release-mode encoder.", arch_specifier=_SVD_ONLY, options=_COGVIDEOX_RELEASE),
    _dyva("dyva_cogvideox_qwen+7b", "cogvideox", "Authors' dev-branch eval target: CogVideoX-1.5 alone (release mode), "
          "fused GELU MLP, Qwen2.5-7B-Instruct.", llm="qwen25-7b-chat", arch_specifier=_SVD_ONLY,
          options=_COGVIDEOX_RELEASE),
    # Pipeline-faithful encoders: the pipeline's first step, mid-depth block, 7 x 7 tokens per latent frame.
    *(_dyva(f"dyva-{kind}_siglip+7b", f"siglip+{kind}", f"SigLIP + {name} (pipeline mode), dual projector, Llama-2 7B.")
      for kind, name in _VIDEO_NAMES.items()),
    *(_dyva(f"dyva-{kind}_siglip_qwen+7b", f"siglip+{kind}", f"SigLIP + {name} (pipeline mode), dual projector, "
            "Qwen2.5-7B-Instruct.", llm="qwen25-7b-chat") for kind, name in _VIDEO_NAMES.items()),
    *(_dyva(f"dyva-{kind}+7b", kind, f"{name}-only WorldLM (pipeline mode), fused GELU MLP, Llama-2 7B.",
            arch_specifier=_SVD_ONLY) for kind, name in _VIDEO_NAMES.items()),
    # Tiny twins (random tiny video models with the real block structure; CPU tests).
    *(_dyva(f"dyva-{kind}_siglip+tiny", f"tiny-siglip+{kind}", f"Tiny SigLIP + tiny {kind} + tiny Llama-2.",
            llm="tiny-llama2") for kind in _VIDEO_NAMES),
    *(_dyva(f"dyva-{kind}+tiny", f"tiny-{kind}", f"Tiny {kind}-only WorldLM with a tiny Llama-2.", llm="tiny-llama2",
            arch_specifier=_SVD_ONLY) for kind in _VIDEO_NAMES),
    _dyva("dyva_dit_siglip+tiny", "tiny-siglip+cogvideox", "Tiny twin of dyva_dit_siglip+7b (release-mode tiny "
          "CogVideoX, raw tokens of 2 latent frames).", llm="tiny-llama2",
          options=(("video_mode", "release"), ("video_pool_grid", 0), ("video_num_frames", 2))),
]  # fmt: skip

MODEL_REGISTRY: dict[str, ModelSpec] = {s.model_id: s for s in _SPECS}
MODEL_ALIASES: dict[str, str] = {"dyva_siglip": "dyva_siglip+7b", "dyva-clip+7b": "dyva_clip+7b"}


def resolve_model_id(model_id: str) -> str:
    resolved = MODEL_ALIASES.get(model_id, model_id)
    if resolved not in MODEL_REGISTRY:
        valid = sorted([*MODEL_REGISTRY, *MODEL_ALIASES])
        raise ValueError(f"Unknown model id {model_id!r}; registered ids are: {', '.join(valid)}.")
    return resolved


def get_model_spec(model_id: str) -> ModelSpec:
    return MODEL_REGISTRY[resolve_model_id(model_id)]
