"""Prompt formats of the LLM backbones, and a factory that maps a registry `PromptFormat` to its builder."""

from __future__ import annotations

from prismatic.models.backbones.llm.prompting.base_prompter import (
    PROMPT_FORMATS,
    PromptBuilder,
    PromptFormat,
    PurePromptBuilder,
)
from prismatic.models.backbones.llm.prompting.llama2_chat_prompter import (
    Llama2ChatPromptBuilder,
    VicunaV15ChatPromptBuilder,
)
from prismatic.models.backbones.llm.prompting.qwen_prompter import QwenChatPromptBuilder

# The chat formats fix their own end markers and stripping (Llama-2 chat and Vicuna strip, Qwen chat does not).
_CHAT_BUILDERS: dict[str, type[PromptBuilder]] = {
    "llama2-chat": Llama2ChatPromptBuilder,
    "vicuna": VicunaV15ChatPromptBuilder,
    "qwen-chat": QwenChatPromptBuilder,
}


def build_prompt_builder(
    prompt_format: PromptFormat, eos_token: str, strip_turns: bool, system_prompt: str | None = None
) -> PromptBuilder:
    """A fresh builder for `prompt_format`. `eos_token` and `strip_turns` configure the base format, which every LLM
    family shares (they come from the family's traits)."""
    if prompt_format == "base":
        return PurePromptBuilder(eos_token=eos_token, system_prompt=system_prompt, strip_turns=strip_turns)
    if prompt_format not in _CHAT_BUILDERS:
        raise ValueError(f"Unknown prompt format {prompt_format!r}; valid formats are {list(PROMPT_FORMATS)}.")
    return _CHAT_BUILDERS[prompt_format](system_prompt=system_prompt)


__all__ = ["PROMPT_FORMATS", "PromptBuilder", "PromptFormat", "build_prompt_builder"]
