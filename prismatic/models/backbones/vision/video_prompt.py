"""The empty-prompt embedding a DiT video encoder conditions on: computed once, stored, never recomputed at run time.

The text-to-video denoisers (CogVideoX, Wan, LTX-Video) need a text embedding on every call; the encoder's features
come from images alone, so that embedding is the one of the empty prompt, and the multi-billion-parameter text encoder
that computes it (T5-XXL, UMT5-XXL) has no business being loaded on every rank. `scripts/encode_empty_prompt.py` runs
the family's real text encoder once, through the pipeline's own `encode_prompt`, and writes a safetensors file:
- `prompt_embeds` [1, S, D] (float32), and for families that take one (LTX) `prompt_attention_mask` [1, S];
- metadata: the family, the checkpoint, the text encoder's class and weight digest, the prompt, the sequence length.
The encoder reads it from `--model.video_prompt_embeds FILE`, or from `empty_prompt_embeds.safetensors` inside a local
model directory. Tiny test encoders use a seeded random embedding instead. Where the embedding came from, and a
digest of its values, is part of the encoder's feature-cache fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PROMPT_FILE = "empty_prompt_embeds.safetensors"
_EMBEDS, _MASK = "prompt_embeds", "prompt_attention_mask"


@dataclass
class PromptEmbedding:
    embeds: torch.Tensor  # [1, S, D] float32
    attention_mask: torch.Tensor | None  # [1, S] (families whose denoiser takes one)
    provenance: dict[str, Any]

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256(self.embeds.float().contiguous().numpy().tobytes())
        if self.attention_mask is not None:
            digest.update(self.attention_mask.to(torch.int64).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def description(self) -> dict[str, Any]:
        """What the feature cache fingerprints: where the embedding came from and its exact values."""
        # Not where the weights were read from (a hub id and its local copy share a cache, as for every encoder): the
        # text encoder's weight digest in the provenance says which weights they were.
        provenance = {k: v for k, v in self.provenance.items() if k != "model_id"}
        return {"provenance": provenance, "sha256": self.sha256, "shape": list(self.embeds.shape)}


def text_encoder_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, raw bytes): which text encoder weights produced an
    embedding (part of its provenance)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()


def load_text_parts(model_id: str, variant: str | None, encoder_class: Any) -> tuple[Any, torch.nn.Module]:
    """The checkpoint's tokenizer and text encoder (float32, eval), for `scripts/encode_empty_prompt.py` only."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_id, subfolder="tokenizer")
    text_encoder = encoder_class.from_pretrained(model_id, subfolder="text_encoder", variant=variant,
                                                 dtype=torch.float32)  # fmt: skip
    return tokenizer, text_encoder.eval()


def prompt_provenance(
    family: str, model_id: str, variant: str | None, tokenizer: Any, text_encoder: torch.nn.Module, length: int
) -> dict[str, Any]:
    """Where an empty-prompt embedding came from: the same fields for every family."""
    return {"family": family, "model_id": str(model_id), "variant": variant, "prompt": "", "max_sequence_length": length,
            "text_encoder": type(text_encoder).__name__, "text_encoder_sha256": text_encoder_sha256(text_encoder),
            "tokenizer": type(tokenizer).__name__}  # fmt: skip


def save_prompt_embedding(path: str | Path, embedding: PromptEmbedding) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {_EMBEDS: embedding.embeds.detach().float().cpu().contiguous()}
    if embedding.attention_mask is not None:
        tensors[_MASK] = embedding.attention_mask.detach().to(torch.int64).cpu().contiguous()
    save_file(tensors, str(path), metadata={"provenance": json.dumps(embedding.provenance, sort_keys=True)})
    return path


def load_prompt_embedding(path: str | Path | None, family: str, model_id: str | None = None) -> PromptEmbedding:
    """Read a file written by scripts/encode_empty_prompt.py (`path`, or PROMPT_FILE inside a local `model_id`)."""
    if path is None:
        candidate = Path(model_id) / PROMPT_FILE if model_id is not None else None
        if candidate is None or not candidate.is_file():
            raise FileNotFoundError(
                f"The {family} encoder needs the empty-prompt embedding of its text encoder, and none was given. Run "
                f"`python scripts/encode_empty_prompt.py --family {family} --model_id {model_id} --out FILE` once "
                f"(it loads the real text encoder) and pass --model.video_prompt_embeds FILE, or write it to "
                f"{PROMPT_FILE} inside a local copy of the model."
            )
        path = candidate
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"video prompt embedding file {str(path)!r} does not exist; write it with "
            f"`python scripts/encode_empty_prompt.py --family {family} --model_id <model> --out {path}`."
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in keys}
    except Exception as error:  # a truncated or foreign file: say which and what to do
        raise ValueError(
            f"{path} is not a readable prompt embedding file ({type(error).__name__}: {error}); rewrite it with "
            "scripts/encode_empty_prompt.py."
        ) from error
    if _EMBEDS not in tensors or tensors[_EMBEDS].ndim != 3 or tensors[_EMBEDS].shape[0] != 1:
        raise ValueError(f"{path} holds no [1, S, D] {_EMBEDS!r} tensor; rewrite it (scripts/encode_empty_prompt.py).")
    provenance = json.loads(metadata.get("provenance", "{}"))
    if provenance.get("family") not in (None, family):
        raise ValueError(
            f"{path} was computed for the {provenance['family']} family, not {family}; encode the empty prompt with "
            f"this model's own text encoder (scripts/encode_empty_prompt.py --family {family})."
        )
    return PromptEmbedding(tensors[_EMBEDS].float(), tensors.get(_MASK), provenance)


def random_prompt_embedding(shape: tuple[int, int], seed: int, family: str, with_mask: bool = False) -> PromptEmbedding:
    """A seeded random stand-in for tiny test encoders (the global RNG is left untouched)."""
    generator = torch.Generator().manual_seed(seed + 1_000_003)
    # On the CPU even under a `meta` device context (a meta-device build still fingerprints its prompt).
    embeds = torch.randn((1, *shape), generator=generator, device="cpu")
    mask = torch.ones((1, shape[0]), dtype=torch.int64, device="cpu") if with_mask else None
    return PromptEmbedding(embeds, mask, {"family": family, "source": "random", "seed": seed})
