"""Text generation for a PrismaticVLM: prompts and images in, answers out (`PrismaticVLM.generate` calls this).

One call: check and batch the inputs (one prompt or a list of prompts, each with one image, a list of frames or no
image), tokenize every prompt exactly as training tokenized its prefix, left-pad the batch, encode the images once and
splice the visual tokens after each row's first real token, then hand the spliced embeddings to the LLM's own
transformers `generate` (KV cache, logits processors, stop criteria). After the prefill each step costs what the bare
LLM costs: images are never re-encoded and nothing is re-spliced.

Left padding makes every row's next token sit in the last column, so a batch decodes in lockstep; positions come from
the attention mask (as in `splice_visual_tokens`), so a padded row computes what it computes alone.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn as nn
from PIL import Image

from prismatic.models.backbones.vision.base_vision import PixelValues, VisionBackbone, collate_pixel_values
from prismatic.models.vlms.splice import SplicedInputs, pad_rows, splice_visual_tokens
from prismatic.overwatch import initialize_overwatch

if TYPE_CHECKING:  # transformers loads with the model, not with this module
    from transformers import GenerationConfig

    from prismatic.models.backbones.llm.base_llm import LLMBackbone

overwatch = initialize_overwatch(__name__)

# One sample's visual input: an image, a list of frames (for the SVD slots), or None (text only).
SampleImages = Image.Image | Sequence[Image.Image] | None


class GenerativeVLM(Protocol):
    """What generation needs from a VLM. `PrismaticVLM` is one; typing it structurally keeps this module free of an
    import of the model class, which itself imports this module."""

    llm_backbone: LLMBackbone
    vision_backbone: VisionBackbone

    def encode_images(self, pixel_values: PixelValues) -> torch.Tensor: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def eval(self) -> Any: ...


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
    # Every rank keeps stepping until all ranks' rows are done (transformers' `synced_gpus`): needed when the model is
    # sharded over ranks (FSDP) and each rank generates for its own prompts, e.g. evaluation during training.
    synced_gpus: bool = False

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
    input_ids = pad_rows(rows, llm_backbone.pad_token_id, "left")
    attention_mask = pad_rows([[1] * len(ids) for ids in rows], 0, "left")
    return input_ids, attention_mask


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of a module's first floating-point parameter (float32 if it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def prepare_pixel_values(
    vlm: GenerativeVLM, images: list[SampleImages], device: torch.device
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


def splice_prompts(
    vlm: GenerativeVLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: PixelValues | None,
    has_image: torch.Tensor,
) -> SplicedInputs:
    """The LLM input of a left-padded prompt batch: images encoded once, their visual tokens spliced in."""
    text_embeds = vlm.llm_backbone.embed_input_ids(input_ids)
    visual = vlm.encode_images(pixel_values) if pixel_values is not None else None
    return splice_visual_tokens(text_embeds, attention_mask, visual, has_image, None, padding_side="left")


# === Decoding (transformers' `generate`) ===
def generation_config(llm_backbone: LLMBackbone, options: GenerationOptions) -> GenerationConfig:
    """The per-call GenerationConfig: the loader's clean `llm.generation_config` with every token-choosing knob set.

    `generate` fills any field left None from `llm.generation_config` and then from transformers' global defaults
    (top_k=50 among them), so when sampling a disabled option is written as its neutral value (top_k=0, top_p=1.0),
    never as None. Greedy calls unset the sampling knobs instead: transformers applies them only when sampling, and
    warns about any it finds set without do_sample (our options accept, and ignore, e.g. a temperature when greedy).
    """
    sampling = options.do_sample
    config = copy.deepcopy(llm_backbone.llm.generation_config)
    config.update(
        do_sample=sampling,
        temperature=options.temperature if sampling else None,
        top_k=(options.top_k or 0) if sampling else None,
        top_p=(1.0 if options.top_p is None else options.top_p) if sampling else None,
        max_new_tokens=options.max_new_tokens,
        # Our `min_length` counts new tokens; transformers' `min_length` would count the prompt too. The price of the
        # library path: with min_new_tokens > 0 transformers runs two vocabulary-wide stop masks every step (its
        # MinLength and MinNewTokens processors, also after the minimum): ~0.5 ms a step on CPU for a 32k vocabulary,
        # measured; noise next to a real model's step, and the same tokens.
        min_new_tokens=options.min_length,
        eos_token_id=list(llm_backbone.eos_token_ids),  # a list: each row stops on any of the family's stop ids
        pad_token_id=llm_backbone.pad_token_id,  # fed to (and emitted by) rows that already stopped
        # Penalties a hub generation_config.json commonly sets (e.g. Qwen-Instruct's repetition_penalty): the loader
        # gives every model a clean config, this keeps them off even for an LLM whose config came from elsewhere.
        num_beams=1,
        num_return_sequences=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        typical_p=1.0,
        use_cache=True,  # explicitly: models built for training have config.use_cache = False
        return_dict_in_generate=False,
    )
    return config


@contextmanager
def seeded_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the RNG that sampling draws from on `device`, and restore it (and the CPU RNG) afterwards; with no seed,
    sampling uses (and advances) the global RNG.

    transformers samples with `torch.multinomial` on the default generator and takes no `torch.Generator`, so a
    private generator is not possible; forking gives the same guarantees. A seed also still draws what it drew with
    the private generator of the earlier hand-written loop: `manual_seed(seed)` on the default generator and on a fresh
    `torch.Generator(device)` start the same stream.
    """
    if seed is None:
        yield
        return
    on_device = device.type != "cpu"
    index = device.index
    if on_device and index is None:
        index = torch.get_device_module(device.type).current_device()
    # Only the CPU and `device` are forked and seeded: forking every visible GPU would initialize each of them.
    with torch.random.fork_rng(devices=[index] if on_device else [], device_type=device.type if on_device else None):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.default_generators[index].manual_seed(seed)
        elif on_device:
            torch.get_device_module(device.type).manual_seed(seed)
        yield


def cut_at_stop(rows: list[list[int]], stop_ids: Sequence[int]) -> list[list[int]]:
    """Each row up to (excluding) its first stop token; rows that stopped early are padded after it by `generate`."""
    stops = set(stop_ids)
    return [row[: next((i for i, t in enumerate(row) if t in stops), len(row))] for row in rows]


@contextmanager
def eval_mode(module: GenerativeVLM | nn.Module) -> Iterator[None]:
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


def generate_token_ids(vlm: GenerativeVLM, images: object, prompt: object, **options: Any) -> list[list[int]]:
    """The new token ids of each row (stop token excluded); one row when `prompt` is a str. Arguments as `generate`."""
    opts = GenerationOptions.from_kwargs(**options)
    rows, prompts = normalize_inputs(images, prompt)
    llm_backbone = vlm.llm_backbone
    warn_if_fallback_tokenizer(llm_backbone)
    device = llm_backbone.llm.get_input_embeddings().weight.device
    input_ids, attention_mask = tokenize_prompts(llm_backbone, prompts)
    # no_grad rather than inference_mode: a model in the middle of training (FSDP's unsharded parameters) must not
    # come out of evaluation holding inference tensors.
    with eval_mode(vlm), torch.no_grad():
        pixel_values, has_image = prepare_pixel_values(vlm, rows, device)
        spliced = splice_prompts(vlm, input_ids.to(device), attention_mask.to(device), pixel_values, has_image)
        with seeded_rng(opts.seed, device):
            # Position ids passed explicitly: `generate` would derive the same ones from the mask (cumsum - 1, pads at
            # 0), but the splice owns that rule. With inputs_embeds and no input_ids, `generate` returns only the new
            # tokens ([B, <= max_new_tokens]).
            # What differs from the hand-written decode loop this replaced (greedy, per-row stops, min_length and
            # seeded sampling gave the same ids on the tiny Llama and Qwen models, fp32 and bf16): top-p tie-breaking.
            # The loop sorted descending and dropped a token once the tokens above it held >= top_p; transformers
            # sorts ascending and drops a token while the mass up to it is <= 1 - top_p. Same rule and same number of
            # tokens kept, but where tokens with exactly equal logits straddle the cutoff (common with bf16 logits)
            # the two sorts keep different members of the tie, so a seeded sample can pick a different, equally
            # likely token. Not worth a private top-p warper.
            new_tokens = llm_backbone.llm.generate(
                inputs_embeds=spliced.inputs_embeds,
                attention_mask=spliced.attention_mask,
                position_ids=spliced.position_ids,
                generation_config=generation_config(llm_backbone, opts),
                synced_gpus=opts.synced_gpus,
            )
    return cut_at_stop(new_tokens.tolist(), llm_backbone.eos_token_ids)


def generate(vlm: GenerativeVLM, images: object, prompt: object, **options: Any) -> str | list[str]:
    """Answer `prompt` (a str, or a list of str) about `images`; a str back for a str prompt, else a list (see
    `PrismaticVLM.generate`). Special tokens are skipped and surrounding whitespace is stripped, as in prismatic."""
    new_ids = generate_token_ids(vlm, images, prompt, **options)
    tokenizer = vlm.llm_backbone.tokenizer
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_ids]
    return texts[0] if isinstance(prompt, str) else texts
