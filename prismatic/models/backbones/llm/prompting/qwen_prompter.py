"""Qwen2.5 chat format (ChatML), byte-identical to the released training strings.

    turn 1:      "<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n"
    answers:     "{a}<|im_end|>\\n"
    later turns: "<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n"

Qwen turns are tokenized unstripped, so the inference prompt is the plain concatenation of the turn strings and ends
with "<|im_start|>assistant\\n" exactly as in training. This fixes two released inference bugs: `get_prompt()`
rstripped the final "\\n", and removing the previous answer's end marker used `str.rstrip` with a character set,
which ate the end of multi-turn prompts.
"""

from __future__ import annotations

from typing import ClassVar

from prismatic.models.backbones.llm.prompting.base_prompter import PromptBuilder

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


class QwenChatPromptBuilder(PromptBuilder):
    default_system_prompt: ClassVar[str | None] = "You are a helpful assistant."

    def __init__(self, system_prompt: str | None = None) -> None:
        super().__init__(system_prompt=system_prompt, strip_turns=False)

    def wrap_human(self, message: str, first: bool) -> str:
        turn = f"{IM_START}user\n{message}{IM_END}\n{IM_START}assistant\n"
        return f"{IM_START}system\n{self.system_prompt}{IM_END}\n{turn}" if first else turn

    def wrap_gpt(self, message: str) -> str:
        return f"{message}{IM_END}\n"
