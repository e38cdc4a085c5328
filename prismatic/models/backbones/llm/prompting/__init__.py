"""Prompt formats of the LLM backbones, and a factory that maps a registry `PromptFormat` to its builder."""

from __future__ import annotations

from prismatic.models.backbones.llm.prompting.base_prompter import (
    PROMPT_FORMATS,
    ROLES,
    PromptBuilder,
    PromptFormat,
    PurePromptBuilder,
    Role,
    clean_message,
)
from prismatic.models.backbones.llm.prompting.llama2_chat_prompter import (
    Llama2ChatPromptBuilder,
    VicunaV15ChatPromptBuilder,
)
from prismatic.models.backbones.llm.prompting.qwen_prompter import QwenChatPromptBuilder


def build_prompt_builder(
    prompt_format: PromptFormat, eos_token: str, strip_turns: bool, system_prompt: str | None = None
) -> PromptBuilder:
    """A fresh builder for `prompt_format`.

    `eos_token` and `strip_turns` configure the base format, which both LLM families share; the chat formats fix their
    own end markers and stripping (Llama-2 chat and Vicuna strip, Qwen chat does not).
    """
    if prompt_format == "base":
        return PurePromptBuilder(eos_token=eos_token, system_prompt=system_prompt, strip_turns=strip_turns)
    if prompt_format == "llama2-chat":
        return Llama2ChatPromptBuilder(system_prompt=system_prompt)
    if prompt_format == "vicuna":
        return VicunaV15ChatPromptBuilder(system_prompt=system_prompt)
    if prompt_format == "qwen-chat":
        return QwenChatPromptBuilder(system_prompt=system_prompt)
    raise ValueError(f"Unknown prompt format {prompt_format!r}; valid formats are {list(PROMPT_FORMATS)}.")


__all__ = [
    "PROMPT_FORMATS",
    "ROLES",
    "Llama2ChatPromptBuilder",
    "PromptBuilder",
    "PromptFormat",
    "PurePromptBuilder",
    "QwenChatPromptBuilder",
    "Role",
    "VicunaV15ChatPromptBuilder",
    "build_prompt_builder",
    "clean_message",
]
