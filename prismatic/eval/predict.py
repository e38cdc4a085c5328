"""The model side of evaluation: a batch of (images, user message) in, answers out, in the two ways the protocol asks.

- **Closed form** (True/False, Yes/No, lettered choices): `candidate_probabilities` runs one batched forward pass over
  the prompts and reads the logits of the first position the model would generate, softmax-normalised over the
  candidates' token ids. This is what vlm-evaluation computes per item with `generate(..., output_scores=True)` and
  `softmax(scores[0][0])[string2idx]`, renormalised over the candidate set (a full-vocabulary softmax followed by
  renormalisation equals a softmax over the candidates' logits), without the generate loop and in batches.
- **Open form**: `generate_answers` is greedy batched `vlm.generate` (transformers' `generate` underneath).

Both take one user message per row, wrapped by the model's own prompt builder (Llama-2 "pure" `In: ...\\nOut:`, Qwen
chat, ...), so the prompt is the one the model was trained with. Images per row: a PIL image, a list of images (the
generative encoder's keyframes; static encoders see the first), or None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image

if TYPE_CHECKING:
    from prismatic.models.vlms.prismatic import PrismaticVLM

RowImages = Image.Image | list[Image.Image] | None
# What to do with more images than the generative encoder has keyframe slots (MMSI-Bench has up to 10, T = 8).
KeyframePolicy = Literal["subsample", "first"]
KEYFRAME_POLICIES: tuple[KeyframePolicy, ...] = ("subsample", "first")


class CandidateTokenError(ValueError):
    """A closed-form candidate that is not exactly one token for the model's tokenizer."""


def wrap_prompts(vlm: PrismaticVLM, messages: Sequence[str]) -> list[str]:
    """Each user message as the model's inference prompt (its prompt builder, one human turn)."""
    prompts = []
    for message in messages:
        builder = vlm.get_prompt_builder()
        builder.add_turn("human", message)
        prompts.append(builder.get_prompt())
    return prompts


def candidate_token_ids(tokenizer: Any, candidates: Sequence[str]) -> list[int]:
    """The single token id of each candidate, as prismatic's `string2idx` computes it
    (`tokenizer.encode(s, add_special_tokens=False)` must be exactly one id)."""
    ids = []
    for candidate in candidates:
        encoded = list(tokenizer.encode(candidate, add_special_tokens=False))
        if len(encoded) != 1:
            pieces = tokenizer.convert_ids_to_tokens(encoded)
            raise CandidateTokenError(
                f"Candidate {candidate!r} is {len(encoded)} tokens for this tokenizer ({pieces}), but closed-form "
                "scoring reads one token per candidate at the first generated position. Use single-token candidates "
                "(e.g. option letters) or score the benchmark by generation."
            )
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise CandidateTokenError(f"Candidates {list(candidates)} map to repeated token ids {ids}; they must differ.")
    return ids


def first_token_logits(vlm: PrismaticVLM, images: Sequence[RowImages], prompts: Sequence[str]) -> torch.Tensor:
    """Logits [B, V] (float32) of the first token the model would generate after each prompt: one batched forward
    pass, left-padded so every row's next position is the last column (as in `generate`'s prefill)."""
    from prismatic.models.vlms.generation import (
        eval_mode,
        normalize_inputs,
        prepare_pixel_values,
        splice_prompts,
        tokenize_prompts,
    )

    rows, prompt_list = normalize_inputs(list(images), list(prompts))
    llm_backbone = vlm.llm_backbone
    device = llm_backbone.llm.get_input_embeddings().weight.device
    input_ids, attention_mask = tokenize_prompts(llm_backbone, prompt_list)
    with eval_mode(vlm), torch.no_grad():  # not inference_mode: see generation.generate_token_ids
        pixel_values, has_image = prepare_pixel_values(vlm, rows, device)
        spliced = splice_prompts(vlm, input_ids.to(device), attention_mask.to(device), pixel_values, has_image)
        output = llm_backbone.llm(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            position_ids=spliced.position_ids,
            use_cache=False,
            logits_to_keep=1,  # only the last position's logits: no [B, L, V] tensor
        )
    return output.logits[:, -1, :].float()


def candidate_probabilities(
    vlm: PrismaticVLM, images: Sequence[RowImages], prompts: Sequence[str], candidates: Sequence[str]
) -> torch.Tensor:
    """P(candidate) [B, C] at the first generated position, renormalised over the candidates (rows sum to 1).
    `prompts` are full inference prompts (see `wrap_prompts`)."""
    token_ids = candidate_token_ids(vlm.llm_backbone.tokenizer, candidates)
    logits = first_token_logits(vlm, images, prompts)
    return torch.softmax(logits[:, token_ids], dim=-1).cpu()


def generate_answers(
    vlm: PrismaticVLM, images: Sequence[RowImages], prompts: Sequence[str], max_new_tokens: int,
    synced_gpus: bool = False,
) -> list[str]:
    """Greedy answers (special tokens skipped, whitespace stripped), one per prompt. `synced_gpus` for a model sharded
    over the ranks of a distributed job (see `GenerationOptions`)."""
    answers = vlm.generate(list(images), list(prompts), do_sample=False, max_new_tokens=max_new_tokens,
                           synced_gpus=synced_gpus)  # fmt: skip
    return [answers] if isinstance(answers, str) else list(answers)


# === Multi-image items ===
def keyframe_slots(vlm: PrismaticVLM) -> int | None:
    """How many keyframe slots the model's generative encoder has (SVD's T, a video model's latent frames), or None
    when it has none (a static-only model sees the first image of a list and ignores the rest)."""
    return vlm.vision_backbone.max_keyframes


def select_keyframes(count: int, limit: int | None, policy: KeyframePolicy) -> list[int]:
    """Indices of the images to keep when an item has `count` images and the encoder `limit` slots.

    - `subsample` (default): `limit` images spread evenly over the item, first and last kept
      (`round(linspace(0, count - 1, limit))`, half-to-even as numpy and torch round), in dataset order;
    - `first`: the first `limit` images.
    The released code placed K > T images at repeated slots, where which write wins is undefined; neither is that.
    """
    if limit is None or count <= limit:
        return list(range(count))
    if policy == "first":
        return list(range(limit))
    if policy == "subsample":
        if limit == 1:
            return [0]
        return [round(i * (count - 1) / (limit - 1)) for i in range(limit)]
    raise ValueError(f"Unknown keyframe policy {policy!r}; choose one of {list(KEYFRAME_POLICIES)}.")
