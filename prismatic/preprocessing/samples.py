"""Turning one record into training tensors, and the checks that can reject it: images and token budget.

Shared by the datasets (every `__getitem__`) and the preflight pass, so both judge a sample the same way:
- `load_rgb` / `image_problem`: open an image with PIL and decode it fully (a truncated file only fails on decode);
- `SampleTokenizer`: the LLM's `ConversationTokenizer` (released-compatible prompt format and labels), plus the
  visual-token budget: an image row's sequence is its text plus `num_visual_tokens`, and must fit `llm_max_length`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

import torch
from PIL import Image

from prismatic.models.backbones.llm.conversation import ConversationTokenizer
from prismatic.preprocessing.records import ProblemKind
from prismatic.util.constants import IGNORE_INDEX

# How thoroughly the preflight looks at image files: decode every pixel, parse the header only, or not at all.
ImageCheck = Literal["load", "header", "none"]
IMAGE_CHECKS: tuple[str, ...] = get_args(ImageCheck)

# What PIL raises on unreadable files: unknown format and truncation are OSError, broken PNG chunks SyntaxError, bad
# headers ValueError / struct.error / EOFError, oversized images DecompressionBombError.
PIL_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)


def load_rgb(path: Path) -> Image.Image:
    """Open and fully decode an image as RGB (PIL opens lazily; `convert` forces the decode that finds truncation)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def _decode_fully(path: Path) -> None:
    """Decode every byte of the file. JPEGs decode at 1/8 scale (DCT scaling, ~2x faster): the whole entropy-coded
    stream is still read, so truncation and corruption are found just the same."""
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.convert("RGB")


def image_problem(path: Path, check: ImageCheck = "load") -> tuple[ProblemKind, str] | None:
    """What is wrong with an image file (missing, unreadable, corrupt), or None. Never raises for bad files."""
    if check == "none":
        return None
    try:
        if not path.is_file():
            return ProblemKind.MISSING_IMAGE, "no such file" if not path.exists() else "not a regular file"
        with Image.open(path) as image:
            image.verify()  # checksums / structure where the format has them (PNG CRCs)
        if check == "load":
            _decode_fully(path)  # verify() does not decode pixels: a truncated JPEG only fails here
    except PIL_READ_ERRORS as error:
        return ProblemKind.CORRUPT_IMAGE, f"cannot be read as an image ({type(error).__name__}: {error})"
    return None


class SampleTokenizer:
    """Tokenize conversations with the LLM's `ConversationTokenizer` and enforce the sequence budget.

    The conversation tokenizer truncates silently at its `max_length` (the LLM's `llm_max_length`); to tell an
    over-long sample from one that fits, this tokenizes without truncation and applies the budget itself:
    `llm_max_length` minus the visual tokens for image rows. Over-long samples are a `too-long` problem, or, with
    `truncate_long_samples`, cut to the budget (as the released recipe did) as long as some answer token survives.
    """

    def __init__(
        self, conversation: ConversationTokenizer, num_visual_tokens: int, truncate_long_samples: bool = False
    ) -> None:
        self.conversation = conversation
        self.llm_max_length = conversation.max_length
        if num_visual_tokens < 0:
            raise ValueError(f"num_visual_tokens must be >= 0, got {num_visual_tokens}.")
        if self.llm_max_length <= num_visual_tokens:
            raise ValueError(
                f"llm_max_length={self.llm_max_length} leaves no room for text after {num_visual_tokens} visual tokens; "
                f"raise llm_max_length above {num_visual_tokens}."
            )
        self.num_visual_tokens = num_visual_tokens
        self.truncate_long_samples = truncate_long_samples

    def budget(self, has_image: bool) -> int:
        """Text tokens a sample may have: the LLM's window minus the visual tokens spliced into image rows."""
        return self.llm_max_length - (self.num_visual_tokens if has_image else 0)

    def fits_without_tokenizing(self, conversation: Sequence[Mapping[str, str]], has_image: bool) -> bool:
        return self.conversation.length_upper_bound(conversation) <= self.budget(has_image)

    def encode(
        self, conversation: Sequence[Mapping[str, str]], has_image: bool
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[ProblemKind, str]:
        """(input_ids, labels) within budget, or (problem kind, detail) when the sample cannot be used.

        Returning the problem (instead of raising) keeps the caller's bad-sample policy in one place.
        """
        try:
            input_ids, labels = self.conversation.tokenize_conversation(conversation, truncate=False)
        except ValueError as error:  # TokenizationError: empty, misordered, or not round-tripping
            return ProblemKind.MALFORMED_CONVERSATION, str(error)
        budget = self.budget(has_image)
        if len(input_ids) <= budget:
            return input_ids, labels
        total = len(input_ids) + (self.num_visual_tokens if has_image else 0)
        too_long = (
            f"{total} tokens ({len(input_ids)} text"
            + (f" + {self.num_visual_tokens} visual" if has_image else "")
            + f") exceed llm_max_length={self.llm_max_length}"
        )
        if not self.truncate_long_samples:
            return ProblemKind.TOO_LONG, too_long + "; raise llm_max_length, or allow truncation (truncate_long_samples)"
        input_ids, labels = input_ids[:budget], labels[:budget]
        if bool((labels == IGNORE_INDEX).all()):
            return ProblemKind.TOO_LONG, too_long + ", and truncating to fit would cut every answer token"
        return input_ids, labels

    def estimate_length(self, text: str, num_turns: int, has_image: bool) -> int:
        """A tokenizer-free length estimate for the length-grouped sampler, visual tokens of image rows included."""
        return self.conversation.estimate_length(text, num_turns) + (self.num_visual_tokens if has_image else 0)
