"""The protocol's user messages (vlm-evaluation's `get_prompt_fn` for Prismatic models), before the model's prompt
builder wraps them. vlm-evaluation writes each with a leading newline that its prompt builder strips; ours are written
without it, so the wrapped prompts are identical.
"""

from __future__ import annotations

from collections.abc import Sequence

SHORT_ANSWER = "Answer the question using a single word or phrase."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."
TRUE_FALSE_ANSWER = 'Respond with "True" or "False" directly.'
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."


def vqa_prompt(question: str) -> str:
    """VQAv2, GQA, POPE."""
    return f"{question}\n{SHORT_ANSWER}"


def vqa_uncertain_prompt(question: str) -> str:
    """VizWiz: the same, with the trigger for "Unanswerable"."""
    return f"{question}\n{UNANSWERABLE}\n{SHORT_ANSWER}"


def true_false_prompt(statement: str) -> str:
    """VSR."""
    return f'Based on the image, is this statement "True" or "False"? {statement}\n{TRUE_FALSE_ANSWER}'


def multiple_choice_prompt(question: str, choices: Sequence[str]) -> str:
    """TallyQA, AI2D-style multiple choice: the question, the lettered choices, the letter instruction."""
    options = "\n".join(f"{chr(ord('A') + i)}. {choice}" for i, choice in enumerate(choices))
    return f"{question}\n{options}\n{LETTER_ANSWER}"
