"""Text generation for a PrismaticVLM: prompts and images in, answers out (`PrismaticVLM.generate` calls this).

One call: check and batch the inputs (one prompt or a list of prompts, each with one image, a list of frames or no
image), tokenize every prompt exactly as training tokenized its prefix, left-pad the batch, encode the images once and
splice the visual tokens after each row's first real token, run one prefill pass that fills the KV cache, then decode
token by token from that cache. After the prefill each step costs what the bare LLM costs: one new token embedding,
one cached LLM step, one choice of token; images are never re-encoded and nothing is re-spliced.

Left padding makes every row's next token sit in the last column, so a batch decodes in lockstep; positions come from
the attention mask (as in `splice_visual_tokens`), so a padded row computes what it computes alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from PIL import Image

from prismatic.models.backbones.vision.base_vision import PixelValues, collate_pixel_values
from prismatic.models.vlms.splice import SplicedInputs, splice_visual_tokens
from prismatic.overwatch import initialize_overwatch

if TYPE_CHECKING:
    from prismatic.models.backbones.llm.base_llm import LLMBackbone
    from prismatic.models.vlms.prismatic import PrismaticVLM

overwatch = initialize_overwatch(__name__)

# One sample's visual input: an image, a list of frames (for the SVD slots), or None (text only).
SampleImages = Image.Image | Sequence[Image.Image] | None


@dataclass(frozen=True)
class GenerationOptions:
    """How to pick tokens. Greedy by default; `do_sample=True` draws from the (temperature, top-k, top-p) filtered
    distribution, reproducibly when `seed` is given. `min_length` counts new tokens (no stop token before it)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int = 128
    min_length: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.min_length < 0:
            raise ValueError(
                f"min_length must be >= 0 (the number of new tokens before a stop token), got {self.min_length}."
            )
        if self.do_sample and not self.temperature > 0:
            raise ValueError(
                f"temperature must be > 0 when sampling, got {self.temperature}; for deterministic output use "
                "do_sample=False (greedy)."
            )
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}; pass None to disable it.")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 or None disables it), got {self.top_k}.")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> GenerationOptions:
        """Build from `generate(...)` keyword arguments; unknown names fail with the list of supported ones."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(f"generate() got unsupported option(s) {unknown}; supported options are {valid}.")
        return cls(**kwargs)


# === Inputs ===
def _check_sample_images(images: object, where: str) -> SampleImages:
    """One sample's images: None, a PIL image, or a non-empty list/tuple of PIL images (frames)."""
    if images is None or isinstance(images, Image.Image):
        frames = [] if images is None else [images]
    elif isinstance(images, (list, tuple)) and images and all(isinstance(im, Image.Image) for im in images):
        frames = list(images)
    else:
        raise TypeError(
            f"{where} must be a PIL image, a non-empty list of PIL images (frames of one sample) or None, got "
            f"{type(images).__name__}{'' if not isinstance(images, (list, tuple)) else f' of {len(images)}'}; "
            "open files with PIL.Image.open(path).convert('RGB')."
        )
    for index, frame in enumerate(frames):
        if frame.mode != "RGB":
            raise ValueError(f"{where}, image {index} has mode {frame.mode!r}; convert it with image.convert('RGB').")
    return images  # type: ignore[return-value]


def normalize_inputs(images: object, prompt: object) -> tuple[list[SampleImages], list[str]]:
    """(per-row images, per-row prompts); one row for a str prompt, whose `images` are that sample's."""
    if isinstance(prompt, str):
        return [_check_sample_images(images, "images")], [prompt]
    if not isinstance(prompt, (list, tuple)) or not prompt or not all(isinstance(p, str) for p in prompt):
        raise TypeError(
            "prompt must be a str (one sample) or a non-empty list of str (a batch); build it with "
            "vlm.get_prompt_builder() ... get_prompt()."
        )
    if images is None:
        return [None] * len(prompt), list(prompt)
    if not isinstance(images, (list, tuple)):
        raise TypeError(
            f"With a list of {len(prompt)} prompts, images must be a list with one entry per prompt (a PIL image, a "
            f"list of frames, or None), got a {type(images).__name__}."
        )
    if len(images) != len(prompt):
        raise ValueError(
            f"Got {len(images)} image entries for {len(prompt)} prompts; pass one entry per prompt (a PIL image, a "
            "list of frames, or None for a text-only prompt)."
        )
    rows = [_check_sample_images(im, f"images[{i}]") for i, im in enumerate(images)]
    return rows, list(prompt)


def tokenize_prompts(llm_backbone: LLMBackbone, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (input_ids, attention_mask) [B, L].

    Tokenized as one string with the tokenizer's special tokens, which is how training tokenizes turn 0 and what
    `tokenize_conversation` checks the inference prompt against: Llama gets its BOS, Qwen nothing (<|im_start|> is
    the prompt's own first token). Either way token 0 is where the visual tokens go.
    """
    rows = [list(llm_backbone.tokenizer(p, add_special_tokens=True).input_ids) for p in prompts]
    for index, ids in enumerate(rows):
        if not ids:
            raise ValueError(
                f"Prompt {index} ({prompts[index]!r}) tokenizes to nothing; build prompts with "
                "vlm.get_prompt_builder(): add_turn(role='human', message=...) then get_prompt()."
            )
    length = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), length), llm_backbone.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, length - len(ids) :] = 1
    return input_ids, attention_mask


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (float32 if it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def prepare_pixel_values(
    vlm: PrismaticVLM, images: list[SampleImages], device: torch.device
) -> tuple[PixelValues | None, torch.Tensor]:
    """Transform and collate the image rows (pixel values of image rows only, in batch order) and the has_image mask.

    Float tensors (ViT pixels) go to the vision backbone's dtype; integer ones (uint8 SVD frames, frame counts) keep
    theirs, since the SVD encoder hashes the exact bytes and converts them itself.
    """
    has_image = torch.tensor([im is not None for im in images], dtype=torch.bool, device=device)
    if not bool(has_image.any()):
        return None, has_image
    transform = vlm.vision_backbone.get_image_transform()
    batch = collate_pixel_values([transform(im) for im in images if im is not None])
    dtype = module_dtype(vlm.vision_backbone)
    pixel_values = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()}
    return pixel_values, has_image


# === Decoding ===
def filter_logits(logits: torch.Tensor, options: GenerationOptions) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus: the smallest set of tokens holding top_p of the probability)."""
    logits = logits / options.temperature
    if options.top_k:
        k = min(options.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p is not None and options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p; the top token is always kept.
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= options.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(logits: torch.Tensor, options: GenerationOptions, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row [B] from float32 logits [B, V]."""
    if not options.do_sample:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, options).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A private RNG for sampling (the global RNG is left alone); None = draw from the global RNG."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def returned_cache(output: Any) -> Any:
    # transformers 5.2x returns the KV cache as `cache`; earlier releases as `past_key_values`.
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def prefill(
    vlm: PrismaticVLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: PixelValues | None,
    has_image: torch.Tensor,
) -> tuple[SplicedInputs, Any]:
    """Encode the images once, splice them in (left padding) and run the prompt; returns the spliced inputs and the
    LLM output (last-position logits and the filled KV cache)."""
    llm_backbone = vlm.llm_backbone
    text_embeds = llm_backbone.embed_input_ids(input_ids)
    visual = vlm.encode_images(pixel_values) if pixel_values is not None else None
    spliced = splice_visual_tokens(text_embeds, attention_mask, visual, has_image, None, padding_side="left")
    output = llm_backbone(
        inputs_embeds=spliced.inputs_embeds,
        attention_mask=spliced.attention_mask,
        position_ids=spliced.position_ids,
        use_cache=True,  # explicitly: models built for training have config.use_cache = False
        logits_to_keep=1,  # only the last position is needed; full prefill logits would be [B, L + Nv, vocab]
    )
    return spliced, output


def decode_loop(vlm: PrismaticVLM, spliced: SplicedInputs, output: Any, options: GenerationOptions) -> list[list[int]]:
    """Pick tokens from the prefill's logits, then step the cached LLM one token at a time; new ids per row, each
    cut before its first stop token."""
    llm_backbone = vlm.llm_backbone
    batch, prompt_length = spliced.attention_mask.shape
    device = spliced.attention_mask.device
    stop_ids = torch.tensor(llm_backbone.eos_token_ids, dtype=torch.long, device=device)
    generator = make_generator(options.seed, device)
    # The whole mask up front (new tokens are always attended), sliced per step instead of grown.
    mask = torch.cat([spliced.attention_mask, spliced.attention_mask.new_ones(batch, options.max_new_tokens)], dim=1)
    positions = spliced.position_ids[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    new_tokens: list[torch.Tensor] = []
    for step in range(options.max_new_tokens):
        logits = output.logits[:, -1, :].float()
        if step < options.min_length:
            logits = logits.index_fill(1, stop_ids, float("-inf"))
        tokens = choose_tokens(logits, options, generator)
        # A finished row keeps running (lockstep) but its tokens are never read: feed it the pad token.
        tokens = torch.where(finished, llm_backbone.pad_token_id, tokens)
        new_tokens.append(tokens)
        finished |= torch.isin(tokens, stop_ids)
        if step + 1 == options.max_new_tokens or bool(finished.all()):
            break
        output = llm_backbone(
            inputs_embeds=llm_backbone.embed_input_ids(tokens.unsqueeze(1)),
            attention_mask=mask[:, : prompt_length + step + 1],
            position_ids=positions + step,
            past_key_values=returned_cache(output),
            use_cache=True,
        )
    ids = torch.stack(new_tokens, dim=1).tolist()
    stops = set(llm_backbone.eos_token_ids)
    return [row[: next((i for i, t in enumerate(row) if t in stops), len(row))] for row in ids]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then every submodule's own previous mode (frozen parts may have been in eval)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def warn_if_fallback_tokenizer(llm_backbone: LLMBackbone) -> None:
    if getattr(llm_backbone, "tokenizer_is_fallback", False):
        message = (
            f"GENERATING WITH A STAND-IN TOKENIZER: the tokenizer of {llm_backbone.identifier!r} could not be found, "
            "so the packaged vocabulary is in use. With real weights the output is likely garbage (for Llama-2 its "
            "text ids differ). Give the model's tokenizer files (pretrained_path / a local copy) or an hf_token."
        )
        overwatch.warning(message)
        warnings.warn(message, UserWarning, stacklevel=5)  # points at the caller of vlm.generate


def generate_token_ids(vlm: PrismaticVLM, images: object, prompt: object, **options: Any) -> list[list[int]]:
    """The new token ids of each row (stop token excluded); one row when `prompt` is a str. Arguments as `generate`."""
    opts = GenerationOptions.from_kwargs(**options)
    rows, prompts = normalize_inputs(images, prompt)
    llm_backbone = vlm.llm_backbone
    warn_if_fallback_tokenizer(llm_backbone)
    device = llm_backbone.llm.get_input_embeddings().weight.device
    input_ids, attention_mask = tokenize_prompts(llm_backbone, prompts)
    with eval_mode(vlm), torch.inference_mode():
        pixel_values, has_image = prepare_pixel_values(vlm, rows, device)
        spliced, output = prefill(vlm, input_ids.to(device), attention_mask.to(device), pixel_values, has_image)
        return decode_loop(vlm, spliced, output, opts)


def generate(vlm: PrismaticVLM, images: object, prompt: object, **options: Any) -> str | list[str]:
    """Answer `prompt` (a str, or a list of str) about `images`; a str back for a str prompt, else a list (see
    `PrismaticVLM.generate`). Special tokens are skipped and surrounding whitespace is stripped, as in prismatic."""
    new_ids = generate_token_ids(vlm, images, prompt, **options)
    tokenizer = vlm.llm_backbone.tokenizer
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_ids]
    return texts[0] if isinstance(prompt, str) else texts
