"""Jinja chat templates that reproduce the framework's prompt format, for the Hugging Face exports.

The template is derived from the framework's own `PromptBuilder` (not re-typed per format): the builder renders each
kind of turn around sentinel strings, and the pieces between the sentinels become the template's literals. So the
template gives byte for byte what `get_prompt_builder() ... get_prompt()` gives: the same turn strings, the LLaVA
`<image>` placeholder removed from messages and the message stripped (`clean_message`), an empty answer written the
way the builder writes it, and the whole prompt rstripped when the family strips turns. The human turn already ends
with the assistant header ("Out: ", "ASSISTANT: ", "<|im_start|>assistant\\n"), so `add_generation_prompt` adds
nothing.

Where the visual tokens go: the framework splices them right after the prompt's first token (the BOS for Llama-2,
which the tokenizer adds, so at the very start of the text; the first token of the text otherwise, e.g.
`<|im_start|>` for Qwen chat). With `image_token` set, the template writes that token once at the same place when any
message holds an image, which is how Llava expects its image placeholder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from prismatic.models.backbones.llm.prompting import PromptBuilder

# `ConversationTokenizer.prompt_builder`: a fresh builder of the format for a system prompt (None: the default).
BuilderFactory = Callable[[str | None], PromptBuilder]

_MESSAGE = "\x00MESSAGE\x00"
_SYSTEM = "\x00SYSTEM\x00"


@dataclass(frozen=True)
class TurnPieces:
    """A turn string split around its message: `before + message + after`."""

    before: str
    after: str

    @classmethod
    def split(cls, rendered: str, sentinel: str) -> TurnPieces:
        before, found, after = rendered.partition(sentinel)
        if not found:
            raise ValueError(f"The prompt builder dropped the message from the turn {rendered!r}; cannot template it.")
        return cls(before, after)


def _first_turn(builder_factory: BuilderFactory, system: str | None) -> str:
    return builder_factory(system).wrap_human(_MESSAGE, first=True)


def _literal(text: str) -> str:
    """A Jinja string literal (JSON escaping is valid Jinja for these strings)."""
    return json.dumps(text, ensure_ascii=False)


@dataclass(frozen=True)
class FirstTurn:
    """The first human turn with a system prompt: `before + system + between + message + after`; `system` is the Jinja
    expression of the system prompt (the message's, else the format's default; stripped if the builder strips it)."""

    before: str
    system: str
    between: str
    after: str

    @classmethod
    def of(cls, builder_factory: BuilderFactory) -> FirstTurn:
        # Render with a space-padded sentinel: whether the spaces survive says whether the builder strips the prompt.
        padded = f" {_SYSTEM} "
        rendered = _first_turn(builder_factory, padded)
        strip = "" if padded in rendered else ".strip()"
        head = TurnPieces.split(rendered.replace(padded, _SYSTEM), _SYSTEM)
        tail = TurnPieces.split(head.after, _MESSAGE)
        default = builder_factory(None).system_prompt or ""
        return cls(head.before, f"(ns.system if ns.system is not none else {_literal(default)}){strip}", tail.before,
                   tail.after)  # fmt: skip


def build_chat_template(builder_factory: BuilderFactory, image_anchor: str | None, image_token: str | None) -> str:
    """The Jinja template of the prompt format `builder_factory(system_prompt)` builds.

    `image_anchor`: the text of the prompt's first token when the visual tokens go after a token of the text (None or
    "" when they go before all text, after a BOS the tokenizer adds). `image_token`: the placeholder to write there
    when a message holds an image (None: images are not marked in the text, as for the DyVA processor).
    """
    default = builder_factory(None)
    later = TurnPieces.split(default.wrap_human(_MESSAGE, first=False), _MESSAGE)
    answer = TurnPieces.split(default.wrap_gpt(_MESSAGE), _MESSAGE)
    empty_answer = default.wrap_gpt("")
    has_system = default.system_prompt is not None
    first_default = TurnPieces.split(_first_turn(builder_factory, None), _MESSAGE)
    anchor = image_anchor or ""
    lines = [
        "{%- set ns = namespace(text='', first=true, image=false, system=none, parts=[]) -%}",
        "{%- for message in messages -%}",
        "{%- if message['content'] is string -%}{%- set raw = message['content'] -%}",
        "{%- else -%}{%- set ns.parts = [] -%}{%- for item in message['content'] -%}",
        "{%- if item['type'] == 'text' -%}{%- set ns.parts = ns.parts + [item['text']] -%}",
        "{%- elif item['type'] in ['image', 'video'] -%}{%- set ns.image = true -%}{%- endif -%}",
        "{%- endfor -%}{%- set raw = ns.parts | join('\\n') -%}{%- endif -%}",
        # The framework's `clean_message` on user and assistant turns; a system prompt is used as given.
        "{%- set content = raw.replace('<image>', '').strip() -%}",
        "{%- if message['role'] == 'system' -%}",
    ]
    if has_system:
        lines.append("{%- set ns.system = raw -%}")
    else:
        lines.append("{{- raise_exception('This prompt format has no system prompt; drop the system message.') -}}")
    lines += ["{%- elif message['role'] == 'user' -%}", "{%- if ns.first -%}"]
    if has_system:
        first = FirstTurn.of(builder_factory)
        lines.append(
            f"{{%- set ns.text = ns.text + {_literal(first.before)} + {first.system} + {_literal(first.between)} "
            f"+ content + {_literal(first.after)} -%}}"
        )
    else:
        first = f"{_literal(first_default.before)} + content + {_literal(first_default.after)}"
        lines.append(f"{{%- set ns.text = ns.text + {first} -%}}")
    lines += [
        "{%- else -%}",
        f"{{%- set ns.text = ns.text + {_literal(later.before)} + content + {_literal(later.after)} -%}}",
        "{%- endif -%}{%- set ns.first = false -%}",
        "{%- elif message['role'] == 'assistant' -%}",
        f"{{%- if content == '' -%}}{{%- set ns.text = ns.text + {_literal(empty_answer)} -%}}",
        f"{{%- else -%}}{{%- set ns.text = ns.text + {_literal(answer.before)} + content + {_literal(answer.after)} "
        "-%}",
        "{%- endif -%}",
        "{%- else -%}{{- raise_exception('Roles are system, user and assistant.') -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
    ]
    if default.strip_turns:
        lines.append("{%- set ns.text = ns.text.rstrip() -%}")
    if image_token:
        lines.append(
            f"{{%- if ns.image -%}}{{%- set ns.text = ns.text[:{len(anchor)}] + {_literal(image_token)} "
            f"+ ns.text[{len(anchor)}:] -%}}{{%- endif -%}}"
        )
    lines.append("{{- ns.text -}}")
    return "\n".join(lines)
