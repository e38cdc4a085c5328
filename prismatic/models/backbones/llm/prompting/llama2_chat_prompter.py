"""Chat formats of the Llama-2 family: Llama-2-Chat and Vicuna v1.5.

Vicuna v1.5 is byte-identical to the released (prismatic) builder:
    "{system} USER: {q} ASSISTANT: " / "{a}</s>", later turns "USER: {q} ASSISTANT: ".

Llama-2-Chat follows Meta's standard format, with prismatic's system prompt:
    "[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST] " / "{a}</s>", later turns "<s>[INST] {q} [/INST] ".
Two deliberate differences from prismatic's builder, which no released DyVA checkpoint uses: prismatic wrote
"<<SYS>" (one ">" missing) and began turn 0 with a literal "<s>", so training saw two BOS tokens while inference
(which removed that "<s>") saw one. Here the tokenizer adds the only BOS of turn 0.
"""

from __future__ import annotations

from typing import ClassVar

from prismatic.models.backbones.llm.prompting.base_prompter import PromptBuilder

LLAMA2_EOS = "</s>"
LLAMA2_BOS = "<s>"


class Llama2ChatPromptBuilder(PromptBuilder):
    default_system_prompt: ClassVar[str | None] = (
        "You are a helpful language and vision assistant. "
        "You are able to understand the visual content that the user provides, "
        "and assist the user with a variety of tasks using natural language."
    )

    def wrap_human(self, message: str, first: bool) -> str:
        if first:
            system = (self.system_prompt or "").strip()
            return f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{message} [/INST] "
        # Later turns open a new sequence, as Meta's chat format does; the tokenizer maps "<s>" to BOS.
        return f"{LLAMA2_BOS}[INST] {message} [/INST] "

    def wrap_gpt(self, message: str) -> str:
        return f"{message or ' '}{LLAMA2_EOS}"


class VicunaV15ChatPromptBuilder(PromptBuilder):
    default_system_prompt: ClassVar[str | None] = (
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    )

    def wrap_human(self, message: str, first: bool) -> str:
        turn = f"USER: {message} ASSISTANT: "
        return f"{(self.system_prompt or '').strip()} {turn}" if first else turn

    def wrap_gpt(self, message: str) -> str:
        return f"{message or ' '}{LLAMA2_EOS}"
