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
