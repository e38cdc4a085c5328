"""Multi-turn prompt builders: the exact strings an LLM sees in training and at inference.

A `PromptBuilder` turns a LLaVA-style conversation into text, one turn at a time. `add_turn` returns the exact string
of that turn as the training data tokenizes it (each turn separately, see `ConversationTokenizer`), and
`get_prompt` returns the inference prompt, which must tokenize to the same ids as the training prefix.

This module holds the abstract builder and the "base" format that the `-pure` (non-chat) models use:
"In: {question}\nOut: " / "{answer}{eos}".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal, get_args

Role = Literal["human", "gpt"]
ROLES: tuple[str, ...] = get_args(Role)

# Every prompt format the LLM registry can name; `prompting.build_prompt_builder` maps each one to a builder.
PromptFormat = Literal["base", "llama2-chat", "vicuna", "qwen-chat"]
PROMPT_FORMATS: tuple[str, ...] = get_args(PromptFormat)

IMAGE_PLACEHOLDER = "<image>"


def clean_message(message: str) -> str:
    """Drop LLaVA's "<image>" placeholder (visual tokens are spliced in by the VLM) and surrounding whitespace."""
    return message.replace(IMAGE_PLACEHOLDER, "").strip()


class PromptBuilder(ABC):
    """Builds a conversation turn by turn; human and gpt turns alternate, starting with human.

    `strip_turns` ties training to inference: when True (the Llama-family formats, as released), training tokenizes
    each turn string rstripped and `get_prompt()` rstrips the prompt; when False (Qwen), neither is stripped.
    """

    # The format's default system prompt; None when the format has no system slot.
    default_system_prompt: ClassVar[str | None] = None

    def __init__(self, system_prompt: str | None = None, strip_turns: bool = True) -> None:
        if system_prompt is not None and self.default_system_prompt is None:
            raise ValueError(
                f"The {type(self).__name__} format has no system prompt; call get_prompt_builder() without "
                "`system_prompt`, or use a chat model (e.g. a `-chat` LLM id) if you need one."
            )
        self.system_prompt: str | None = system_prompt if system_prompt is not None else self.default_system_prompt
        self.strip_turns = strip_turns
        self.prompt = ""
        self.turn_count = 0

    # === Format-specific pieces ===
    @abstractmethod
    def wrap_human(self, message: str, first: bool) -> str:
        """The string of a human turn; `first` is True for the opening turn (which carries the system prompt)."""

    @abstractmethod
    def wrap_gpt(self, message: str) -> str:
        """The string of an assistant turn, ending with the format's end-of-turn marker."""

    # === Shared logic ===
    @property
    def next_role(self) -> Role:
        return "human" if self.turn_count % 2 == 0 else "gpt"

    def add_turn(self, role: Role, message: str) -> str:
        """Append one turn; return its exact string (what the training data tokenizes for this turn)."""
        if role not in ROLES:
            raise ValueError(f"Unknown role {role!r}; a turn's role is one of {list(ROLES)}.")
        if role != self.next_role:
            raise ValueError(
                f"Turn {self.turn_count} must come from {self.next_role!r}, got {role!r}: conversations alternate "
                "human/gpt and start with a human turn."
            )
        text = clean_message(message)
        wrapped = self.wrap_human(text, first=self.turn_count == 0) if role == "human" else self.wrap_gpt(text)
        self.prompt += wrapped
        self.turn_count += 1
        return wrapped

    def get_prompt(self) -> str:
        """The inference prompt: the turns so far, as the model saw them in training (BOS comes from the tokenizer)."""
        return self.prompt.rstrip() if self.strip_turns else self.prompt


class PurePromptBuilder(PromptBuilder):
    """Base-model format (the `-pure` ids): "In: {q}\\nOut: " / "{a}{eos}", no system prompt.

    `eos_token` is the tokenizer's end-of-sequence string: "</s>" for Llama-2, "<|endoftext|>" for Qwen2.5. The
    released Qwen-pure model printed a literal "</s>" (plain text to Qwen), so it never learned to emit a real EOS;
    using the tokenizer's own EOS here fixes that.
    """

    def __init__(self, eos_token: str, system_prompt: str | None = None, strip_turns: bool = True) -> None:
        super().__init__(system_prompt=system_prompt, strip_turns=strip_turns)
        self.eos_token = eos_token

    def wrap_human(self, message: str, first: bool) -> str:
        return f"In: {message}\nOut: "

    def wrap_gpt(self, message: str) -> str:
        # As released: an empty answer becomes " " so the turn still teaches the EOS.
        return f"{message or ' '}{self.eos_token}"
