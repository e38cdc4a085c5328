"""The LLM backbone: a Hugging Face causal LM plus its tokenizer, prompt format and training tokenization.

`LLMBackbone` is what the VLM codes against: it embeds token ids, runs the LM on spliced embeddings, and hands out
prompt builders and the `ConversationTokenizer` that turns LLaVA-style conversations into (input_ids, labels) exactly
as the released training data did. Build one with `loading.get_llm_backbone_and_tokenizer`.

Padding is tracked by attention masks and -100 labels, never by comparing ids with `pad_token_id`: for Qwen2.5 the pad
token (<|endoftext|>, 151643) is also the base model's EOS, which a `-pure` answer ends with and must be learned.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from prismatic.models.backbones.llm.conversation import ConversationTokenizer
from prismatic.models.backbones.llm.prompting import PromptBuilder
from prismatic.models.backbones.llm.registry import LLMSpec
from prismatic.models.losses import DEFAULT_CHUNK_ROWS, LossKernel, label_cross_entropy

if TYPE_CHECKING:  # transformers is imported by the loader that builds the module, not by importing this file
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from transformers.modeling_outputs import CausalLMOutputWithPast


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
    def transformer_layer_cls(self) -> type[nn.Module]:
        """The decoder block: the unit of FSDP wrapping and activation checkpointing."""
        return self.spec.traits.decoder_layer_cls

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end a generated answer (a list: Qwen chat stops on <|im_end|> and on <|endoftext|>)."""
        return self.conversation_tokenizer().stop_token_ids

    # === Compute ===
    def decoder_layers(self) -> list[nn.Module]:
        """The decoder blocks (`transformer_layer_cls`), in depth order."""
        return [module for module in self.llm.modules() if isinstance(module, self.transformer_layer_cls)]

    def enable_gradient_checkpointing(self, every: int = 1) -> list[int]:
        """Recompute decoder-layer activations in backward: every layer (`every=1`, transformers' own API, as always),
        or selectively one layer in `every` (layers 0, every, 2 * every, ...; see `checkpoint_layers`). Non-reentrant,
        so no input-requires-grad hook is needed even when the LLM is frozen (gradients still reach the projector
        through `inputs_embeds`). Returns the indices of the checkpointed layers."""
        if every < 1:
            raise ValueError(f"Checkpoint one decoder layer in `every` >= 1 layers, got every={every}; to turn "
                             "checkpointing off, do not enable it (enable_gradient_checkpointing=False).")  # fmt: skip
        if every > 1:
            return self.checkpoint_layers([index for index in range(len(self.decoder_layers())) if index % every == 0])
        self._enable_hf_gradient_checkpointing()
        return list(range(len(self.decoder_layers())))

    def checkpoint_layers(self, indices: Sequence[int]) -> list[int]:
        """Checkpoint the decoder layers at `indices` only (selective activation checkpointing), applied around the
        model: each chosen layer's `forward` runs under non-reentrant `torch.utils.checkpoint`, so parameter names
        (checkpoints, optimizer groups) are unchanged and FSDP's hooks on the layer stay outside the recomputed
        region. Recomputation replays the same kernels on the same inputs, so losses and gradients are bitwise those
        of the unwrapped model on a deterministic backend."""
        layers = self.decoder_layers()
        bad = [index for index in indices if not 0 <= index < len(layers)]
        if bad:
            raise ValueError(f"Decoder layer indices {bad} out of range: the LLM has {len(layers)} layers.")
        self.llm.config.use_cache = False
        for index in sorted(set(indices)):
            layer = layers[index]
            if not getattr(layer, "_prismatic_checkpointed", False):
                layer.forward = _checkpointed(layer.forward)
                layer._prismatic_checkpointed = True
        return self.checkpointed_layers()

    def checkpointed_layers(self) -> list[int]:
        """Indices of the decoder layers `checkpoint_layers` wrapped (transformers' full checkpointing not included)."""
        return [i for i, layer in enumerate(self.decoder_layers()) if getattr(layer, "_prismatic_checkpointed", False)]

    def compile_decoder_layers(self, backend: str) -> None:
        """`torch.compile` each decoder layer in place (`nn.Module.compile`: parameter names, hence checkpoints and
        optimizer groups, are unchanged; activation checkpointing and FSDP's per-layer hooks stay outside the compiled
        region, torchtitan's order). Every layer runs the same code, so one graph serves them all after the first."""
        for layer in self.decoder_layers():
            layer.compile(backend=backend)

    def _enable_hf_gradient_checkpointing(self) -> None:
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
        logits_mask: torch.Tensor | None = None,
        loss_targets: torch.Tensor | None = None,
        loss_kernel: LossKernel = "plain",
        loss_chunk_rows: int = DEFAULT_CHUNK_ROWS,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Run the LM on (spliced) embeddings; with `labels` the output carries the shifted cross-entropy loss.

        `logits_mask` (bool [B, L]) computes logits only where it is True: `output.logits` is then [n_true, vocab], in
        row-major order of the mask (training needs logits only where a label follows, and the LM head over a 32k-152k
        vocabulary at every position is most of a small model's step). With `loss_targets` ([n_true], in that order)
        the output instead carries `loss`, the SUM of their cross-entropies computed by `loss_kernel`
        (`prismatic.models.losses`; "chunked" and "liger" never hold [n_true, vocab] logits), and no logits; the loss
        is computed inside this forward so that a wrapper's gathered head weight is what it uses. Generation does not
        come through here: it runs transformers' `generate` on the LM itself (see `prismatic.models.vlms.generation`).
        """
        if logits_mask is not None:
            if labels is not None:
                raise ValueError("logits_mask computes selected logits for a loss outside the LM: pass no labels.")
            hidden = self.llm.get_decoder()(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
            from transformers.modeling_outputs import CausalLMOutputWithPast

            head = self.llm.get_output_embeddings()
            if loss_targets is not None:
                loss = label_cross_entropy(hidden[logits_mask], head, loss_targets, loss_kernel, loss_chunk_rows)
                return CausalLMOutputWithPast(loss=loss)
            return CausalLMOutputWithPast(logits=head(hidden[logits_mask]))
        return self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                        position_ids=position_ids, **kwargs)  # fmt: skip

    # === Prompts and training tokenization ===
    def conversation_tokenizer(self, max_length: int | None = None) -> ConversationTokenizer:
        """The tokenizer, family traits and prompt format that datasets need, without this module; it truncates to
        `max_length` (default: `llm_max_length`)."""
        length = self.llm_max_length if max_length is None else max_length
        return ConversationTokenizer.for_spec(self.identifier, self.spec, self.tokenizer, length)

    def get_prompt_builder(self, system_prompt: str | None = None) -> PromptBuilder:
        return self.conversation_tokenizer().prompt_builder(system_prompt=system_prompt)

    def tokenize_conversation(
        self, conversation: Sequence[Mapping[str, str]]
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """(input_ids, labels) of a LLaVA-style conversation, truncated to `llm_max_length`; see
        `ConversationTokenizer.tokenize_conversation`."""
        return self.conversation_tokenizer().tokenize_conversation(conversation)


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    """`forward` under non-reentrant activation checkpointing while gradients are recorded (plain otherwise: eval and
    generation keep their cache and speed)."""

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run
