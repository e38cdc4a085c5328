"""The LLM backbone: a Hugging Face causal LM plus its tokenizer, prompt format and training tokenization.

`LLMBackbone` is what the VLM codes against: it embeds token ids, runs the LM on spliced embeddings, hands out prompt
builders and turns LLaVA-style conversations into (input_ids, labels) exactly as the released training data did.
Build one with `prismatic.models.backbones.llm.loading.get_llm_backbone_and_tokenizer`.

Padding is tracked by attention masks and -100 labels, never by comparing ids with `pad_token_id`: for Qwen2.5 the pad
token (<|endoftext|>, 151643) is also the base model's EOS, which a `-pure` answer ends with and must be learned.
"""

from __future__ import annotations

import inspect
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from prismatic.models.backbones.llm.prompting import PromptBuilder, build_prompt_builder
from prismatic.models.backbones.llm.registry import LLMSpec

IGNORE_INDEX = -100

# The decoder block of each family: the unit of FSDP wrapping and activation checkpointing.
DECODER_LAYER_CLS: dict[str, type[nn.Module]] = {"llama2": LlamaDecoderLayer, "qwen25": Qwen2DecoderLayer}

# How the released training data tokenized each turn string, per family: Llama turns were rstripped and turn 0 got
# the tokenizer's special tokens (BOS); Qwen turns were tokenized as-is, with no special tokens (Qwen has no BOS).
STRIP_TURNS: dict[str, bool] = {"llama2": True, "qwen25": False}
BOS_ON_FIRST_TURN: dict[str, bool] = {"llama2": True, "qwen25": False}

# End-of-sequence text of the base ("pure") format, per family.
BASE_EOS_TOKEN: dict[str, str] = {"llama2": "</s>", "qwen25": "<|endoftext|>"}


def stop_tokens(family: str, prompt_format: str) -> tuple[str, ...]:
    """Tokens that end a generated answer, primary first. Qwen chat stops on <|im_end|> and also <|endoftext|>."""
    if family == "llama2":
        return ("</s>",)
    return ("<|im_end|>", "<|endoftext|>") if prompt_format == "qwen-chat" else ("<|endoftext|>",)


class TokenizationError(ValueError):
    """A training sample whose token ids would not teach what its text says (raised, never silently masked)."""


def _sample_text(conversation: Sequence[Mapping[str, str]], limit: int = 300) -> str:
    text = " | ".join(f"{turn.get('from')}: {turn.get('value')}" for turn in conversation)
    return repr(text if len(text) <= limit else text[:limit] + "...")


class LLMBackbone(nn.Module):
    """A causal LM (`llm`), its `tokenizer` and registry `spec`, under the registry id `identifier`."""

    def __init__(
        self,
        identifier: str,
        spec: LLMSpec,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        llm_max_length: int = 2048,
    ) -> None:
        super().__init__()
        self.identifier = identifier
        self.spec = spec
        self.llm = llm
        self.tokenizer = tokenizer
        self.llm_max_length = llm_max_length
        # True when the loader substituted the packaged vocabulary for a tokenizer it could not find (inference mode
        # only). For Llama-2 ids that vocabulary has other text ids: generating with real weights would be garbage.
        self.tokenizer_is_fallback = False

    # === Sizes, dtypes, special tokens ===
    @property
    def embed_dim(self) -> int:
        return int(self.llm.config.hidden_size)

    @property
    def half_precision_dtype(self) -> torch.dtype:
        return torch.bfloat16

    @property
    def transformer_layer_cls(self) -> type[nn.Module]:
        return DECODER_LAYER_CLS[self.spec.family]

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end a generated answer (a list: Qwen chat stops on <|im_end|> and on <|endoftext|>)."""
        tokens = stop_tokens(self.spec.family, self.spec.prompt_format)
        return [int(self.tokenizer.convert_tokens_to_ids(token)) for token in tokens]

    # === Compute ===
    def enable_gradient_checkpointing(self) -> None:
        """Recompute decoder-layer activations in backward. Non-reentrant, so no input-requires-grad hook is needed
        even when the LLM is frozen (gradients still reach the projector through `inputs_embeds`)."""
        self.llm.config.use_cache = False
        non_reentrant = {"use_reentrant": False}
        # `activation_checkpointing_enable` is the newer name; older transformers 5.x releases only have the old one.
        if hasattr(self.llm, "activation_checkpointing_enable"):
            self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=non_reentrant)
        else:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=non_reentrant)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(input_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        logits_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Run the LM on (spliced) embeddings; with `labels` the output carries the shifted cross-entropy loss.

        `logits_mask` (bool [B, L]) computes logits only where it is True: `output.logits` is then [n_true, vocab], in
        row-major order of the mask (training needs logits only where a label follows, and the LM head over a 32k-152k
        vocabulary at every position is most of a small model's step). `past_key_values` (the name the VLM code uses)
        is handed to transformers as `cache` where the model takes that newer name (transformers 5.2x, where the
        returned KV cache is `output.cache`), else as `past_key_values`.
        """
        if logits_mask is not None:
            if labels is not None or past_key_values is not None:
                raise ValueError("logits_mask computes selected logits for a loss outside the LM: pass no labels/cache.")
            hidden = self.llm.get_decoder()(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
            return CausalLMOutputWithPast(logits=self.llm.get_output_embeddings()(hidden[logits_mask]))
        if past_key_values is not None:
            takes_cache = "cache" in inspect.signature(type(self.llm).forward).parameters
            kwargs["cache" if takes_cache else "past_key_values"] = past_key_values
        return self.llm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            labels=labels,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        )

    # === Prompts and training tokenization ===
    def get_prompt_builder(self, system_prompt: str | None = None) -> PromptBuilder:
        family = self.spec.family
        return build_prompt_builder(
            self.spec.prompt_format,
            eos_token=BASE_EOS_TOKEN[family],
            strip_turns=STRIP_TURNS[family],
            system_prompt=system_prompt,
        )

    def _encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def _decodes_to(self, ids: list[int], text: str) -> bool:
        decoded = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        # SentencePiece decoders drop the dummy-prefix space, and Qwen's tokenizer NFC-normalizes its input.
        return any(decoded.lstrip(" ") == t.lstrip(" ") for t in (text, unicodedata.normalize("NFC", text)))

    def tokenize_conversation(
        self, conversation: Sequence[Mapping[str, str]]
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """LLaVA-style turns ({"from": "human"|"gpt", "value": str}, alternating, human first) -> (input_ids, labels).

        As the released training data: each turn string of the prompt builder is tokenized on its own (rstripped
        for Llama, special tokens on turn 0 only, i.e. the Llama BOS) and concatenated; labels are -100 except on
        assistant turns (answer plus end marker), and labels[0] is always -100; both are truncated to
        `llm_max_length`. Checks, each raising `TokenizationError` (a ValueError) that quotes the sample:
        every assistant span decodes back to its turn string and contains a stop token; the inference prompt
        before the last assistant turn (`get_prompt()`) tokenizes to exactly the training prefix; and at least one
        label survives truncation.
        """
        if not conversation:
            raise TokenizationError("Empty conversation: a training sample needs at least a human and a gpt turn.")
        family = self.spec.family
        builder = self.get_prompt_builder()
        stop_ids = set(self.eos_token_ids)
        input_ids: list[int] = []
        labels: list[int] = []
        prompt_check: tuple[str, int] | None = None  # (inference prompt, training prefix length) at the last human
        for index, turn in enumerate(conversation):
            role, value = turn.get("from"), turn.get("value")
            if not isinstance(value, str):
                raise TokenizationError(f"Turn {index} has no string 'value' in sample {_sample_text(conversation)}.")
            try:
                text = builder.add_turn(role, value)  # type: ignore[arg-type]
            except ValueError as error:
                raise TokenizationError(f"{error} Sample: {_sample_text(conversation)}") from error
            if STRIP_TURNS[family]:
                text = text.rstrip()
            ids = self._encode(text, add_special_tokens=BOS_ON_FIRST_TURN[family] and index == 0)
            if role == "human":
                labels.extend([IGNORE_INDEX] * len(ids))
                prompt_check = (builder.get_prompt(), len(input_ids) + len(ids))
            else:
                if not self._decodes_to(ids, text):
                    raise TokenizationError(
                        f"Assistant turn {index} does not decode back to its text {text!r} with tokenizer "
                        f"{type(self.tokenizer).__name__}; sample {_sample_text(conversation)}."
                    )
                if not stop_ids.intersection(ids):
                    raise TokenizationError(
                        f"Assistant turn {index} holds no stop token {sorted(stop_ids)}, so the model would never "
                        f"learn to stop; is the tokenizer the one of {self.identifier!r}? Sample "
                        f"{_sample_text(conversation)}."
                    )
                labels.extend(ids)
            input_ids.extend(ids)

        if prompt_check is not None:
            prompt, prefix_len = prompt_check
            if self._encode(prompt, add_special_tokens=True) != input_ids[:prefix_len]:
                raise TokenizationError(
                    f"The inference prompt {prompt!r} does not tokenize to the training prefix (per-turn "
                    f"tokenization), so generation would see other ids than training; sample "
                    f"{_sample_text(conversation)}."
                )

        input_ids, labels = input_ids[: self.llm_max_length], labels[: self.llm_max_length]
        labels[0] = IGNORE_INDEX
        if all(label == IGNORE_INDEX for label in labels):
            raise TokenizationError(
                f"No assistant token is left to learn (conversation ends with a human turn, or llm_max_length="
                f"{self.llm_max_length} truncates every answer); raise llm_max_length or drop the sample "
                f"{_sample_text(conversation)}."
            )
        return torch.tensor(input_ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
