"""Training tokenization of LLaVA-style conversations: `ConversationTokenizer`, what the datasets hold.

It is the LLM's tokenizer plus what decides how a conversation becomes ids: the family traits, the prompt format and
the context length. It holds no model, so datasets and the preflight stay small (and cheap to send to data-loader
workers). Build one with `LLMBackbone.conversation_tokenizer()`, or directly from a registry spec with `for_spec`.

The ids are exactly the released training data's: each turn string of the prompt builder is tokenized on its own
(rstripped when the family strips turns, special tokens on turn 0 only, i.e. the Llama BOS) and concatenated.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from prismatic.models.backbones.llm.families import LLMFamilyTraits
from prismatic.models.backbones.llm.prompting import PromptBuilder, PromptFormat, build_prompt_builder
from prismatic.util.constants import IGNORE_INDEX

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from prismatic.models.backbones.llm.registry import LLMSpec

Conversation = Sequence[Mapping[str, str]]

# Upper bound of tokens per turn string beyond one per UTF-8 byte (BOS, SentencePiece's dummy prefix per chunk).
_TOKENS_PER_TURN_SLACK = 8


class TokenizationError(ValueError):
    """A training sample whose token ids would not teach what its text says (raised, never silently masked)."""


def _sample_text(conversation: Conversation, limit: int = 300) -> str:
    text = " | ".join(f"{turn.get('from')}: {turn.get('value')}" for turn in conversation)
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass(frozen=True, eq=False)
class ConversationTokenizer:
    """An HF `tokenizer` with the `traits` and `prompt_format` of LLM `identifier` (its registry id, which keys the
    preflight cache), truncating to `max_length` tokens (the LLM's context window)."""

    tokenizer: PreTrainedTokenizerBase
    traits: LLMFamilyTraits
    prompt_format: PromptFormat
    max_length: int
    identifier: str

    def __post_init__(self) -> None:
        self.traits.stop_tokens(self.prompt_format)  # raises for a format the family does not speak
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}; pass the LLM's llm_max_length.")

    @classmethod
    def for_spec(
        cls, identifier: str, spec: LLMSpec, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> ConversationTokenizer:
        return cls(tokenizer, spec.traits, spec.prompt_format, max_length, identifier)

    # === Special tokens ===
    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end a generated answer, primary first (Qwen chat stops on <|im_end|> and on <|endoftext|>)."""
        tokens = self.traits.stop_tokens(self.prompt_format)
        return [int(self.tokenizer.convert_tokens_to_ids(token)) for token in tokens]

    # === Prompts ===
    def prompt_builder(self, system_prompt: str | None = None) -> PromptBuilder:
        return build_prompt_builder(
            self.prompt_format,
            eos_token=self.traits.base_eos_token,
            strip_turns=self.traits.strip_turns,
            system_prompt=system_prompt,
        )

    # === Lengths without tokenizing ===
    def length_upper_bound(self, conversation: Conversation) -> int:
        """A cheap bound on the token count: every token of the byte-level and SentencePiece vocabularies covers at
        least one UTF-8 byte, plus a few tokens of slack per turn."""
        builder = self.prompt_builder()
        turns = [builder.add_turn(turn["from"], turn["value"]) for turn in conversation]  # type: ignore[arg-type]
        return sum(len(text.encode("utf-8")) + _TOKENS_PER_TURN_SLACK for text in turns)

    @staticmethod
    def estimate_length(text: str, num_turns: int) -> int:
        """A rough token count for length grouping: ~4 characters per token plus the template's tokens per turn."""
        return (len(text) + 3) // 4 + 6 * num_turns

    # === Training tokenization ===
    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def _decodes_to(self, ids: list[int], text: str) -> bool:
        decoded = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        # SentencePiece decoders drop the dummy-prefix space, and Qwen's tokenizer NFC-normalizes its input.
        return any(decoded.lstrip(" ") == t.lstrip(" ") for t in (text, unicodedata.normalize("NFC", text)))

    def tokenize_conversation(
        self, conversation: Conversation, truncate: bool = True
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """LLaVA-style turns ({"from": "human"|"gpt", "value": str}, alternating, human first) -> (input_ids, labels).

        Labels are -100 except on assistant turns (answer plus end marker), and labels[0] is always -100; with
        `truncate` both are cut to `max_length` (callers that apply their own budget pass False). Checks, each
        raising `TokenizationError` (a ValueError) that quotes the sample: every assistant span decodes back to its
        turn string and contains a stop token; the inference prompt before the last assistant turn (`get_prompt()`)
        tokenizes to exactly the training prefix; and at least one label survives truncation.
        """
        if not conversation:
            raise TokenizationError("Empty conversation: a training sample needs at least a human and a gpt turn.")
        input_ids, labels, prompt_check = self._tokenize_turns(conversation)
        if prompt_check is not None:
            prompt, prefix_len = prompt_check
            if self._encode(prompt, add_special_tokens=True) != input_ids[:prefix_len]:
                raise TokenizationError(
                    f"The inference prompt {prompt!r} does not tokenize to the training prefix (per-turn "
                    f"tokenization), so generation would see other ids than training; sample "
                    f"{_sample_text(conversation)}."
                )

        if truncate:
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        labels[0] = IGNORE_INDEX
        if all(label == IGNORE_INDEX for label in labels):
            why, fix = "conversation ends with a human turn", "drop the sample"
            if truncate:
                why += f", or llm_max_length={self.max_length} truncates every answer"
                fix = "raise llm_max_length or " + fix
            raise TokenizationError(f"No assistant token is left to learn ({why}); {fix} {_sample_text(conversation)}.")
        return torch.tensor(input_ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)

    def _tokenize_turns(self, conversation: Conversation) -> tuple[list[int], list[int], tuple[str, int] | None]:
        """Per-turn ids and labels, and (inference prompt, training prefix length) at the last human turn."""
        builder = self.prompt_builder()
        stop_ids = set(self.stop_token_ids)
        input_ids: list[int] = []
        labels: list[int] = []
        prompt_check: tuple[str, int] | None = None
        for index, turn in enumerate(conversation):
            role, value = turn.get("from"), turn.get("value")
            if not isinstance(value, str):
                raise TokenizationError(f"Turn {index} has no string 'value' in sample {_sample_text(conversation)}.")
            try:
                text = builder.add_turn(role, value)  # type: ignore[arg-type]
            except ValueError as error:
                raise TokenizationError(f"{error} Sample: {_sample_text(conversation)}") from error
            if self.traits.strip_turns:
                text = text.rstrip()
            ids = self._encode(text, add_special_tokens=self.traits.bos_on_first_turn and index == 0)
            if role == "human":
                labels.extend([IGNORE_INDEX] * len(ids))
                prompt_check = (builder.get_prompt(), len(input_ids) + len(ids))
            else:
                self._check_answer(ids, text, index, stop_ids, conversation)
                labels.extend(ids)
            input_ids.extend(ids)
        return input_ids, labels, prompt_check

    def _check_answer(
        self, ids: list[int], text: str, index: int, stop_ids: set[int], conversation: Conversation
    ) -> None:
        if not self._decodes_to(ids, text):
            raise TokenizationError(
                f"Assistant turn {index} does not decode back to its text {text!r} with tokenizer "
                f"{type(self.tokenizer).__name__}; sample {_sample_text(conversation)}."
            )
        if not stop_ids.intersection(ids):
            raise TokenizationError(
                f"Assistant turn {index} holds no stop token {sorted(stop_ids)}, so the model would never learn to "
                f"stop; is the tokenizer the one of {self.identifier!r}? Sample {_sample_text(conversation)}."
            )
