"""What sets each LLM family apart, in one frozen record per family: `LLMFamilyTraits`, registered in `LLM_FAMILIES`.

Every family-dependent decision reads these traits: the prompt formats a family speaks and how the released training
data tokenized their turn strings, the stop tokens, the pad token, the tokenizer's loading kwargs and packaged
stand-in vocabulary, the decoder-layer class and the special-token ids of the architecture configs. Adding a family
is one `LLMFamilyTraits` entry plus one line in `LLM_FAMILIES`; its model ids then go into `registry.LLM_BACKBONES`.

Nothing here imports transformers, because the config layer imports this module (through the registry) even for
`--help`: classes and builders that need transformers are named by dotted path and imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prismatic.models.backbones.llm.prompting import PROMPT_FORMATS

if TYPE_CHECKING:
    import torch.nn as nn
    from transformers import PreTrainedTokenizerBase

TokenizerPaddingSide = Literal["right", "left"]


def import_dotted(path: str) -> Any:
    """The object `package.module.name` names (imported now, so heavy modules load only when used)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True, eq=False)
class LLMFamilyTraits:
    """Everything that differs between LLM families; see the module docstring. Records compare by identity (one per
    family), and their mappings are plain dicts, read-only by convention, so that they pickle (data-loader workers
    started with `spawn` receive the datasets, and so these traits, pickled).

    `stop_tokens_by_format` maps each prompt format the family speaks to the tokens that end an answer in it, primary
    first (the primary one is also the packaged tokenizer's EOS). The pad token is either a new special token
    (`adds_pad_token`: the tokenizer gains it and the embeddings are resized to a multiple of `pad_to_multiple_of`,
    as the released Llama-2 recipe did) or an existing token, set only when the tokenizer has no pad (Qwen2.5).
    """

    name: str
    display_name: str
    stop_tokens_by_format: Mapping[str, tuple[str, ...]]
    # End-of-sequence text of the base ("pure") prompt format.
    base_eos_token: str
    # How the released training data tokenized each turn string: rstripped or as-is, and whether turn 0 got the
    # tokenizer's special tokens (the BOS). A family without BOS must have a tokenizer that adds no special tokens.
    strip_turns: bool
    bos_on_first_turn: bool
    pad_token: str
    adds_pad_token: bool
    # Ids of the family's special tokens, for the in-code architecture configs.
    special_ids: Mapping[str, int]
    # Dotted paths: the decoder block (the unit of FSDP wrapping and activation checkpointing), and a function
    # `(eos_token: str) -> PreTrainedTokenizerBase` that builds the packaged stand-in tokenizer.
    decoder_layer: str
    packaged_tokenizer: str
    # What the warning says when the packaged vocabulary stands in for a tokenizer that could not be found.
    packaged_vocabulary_note: str
    pad_to_multiple_of: int | None = None
    tokenizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    padding_side: TokenizerPaddingSide = "right"

    def __post_init__(self) -> None:
        unknown = set(self.stop_tokens_by_format) - set(PROMPT_FORMATS)
        if unknown:
            raise ValueError(
                f"LLM family {self.name!r} names unknown prompt formats {sorted(unknown)}; add their builders to "
                "`prompting.build_prompt_builder` first."
            )
        if not self.stop_tokens_by_format or not all(self.stop_tokens_by_format.values()):
            raise ValueError(f"LLM family {self.name!r} needs at least one stop token for every prompt format.")
        if self.adds_pad_token and self.pad_to_multiple_of is None:
            raise ValueError(f"LLM family {self.name!r} adds a pad token, so it needs `pad_to_multiple_of`.")

    @property
    def prompt_formats(self) -> tuple[str, ...]:
        """The prompt formats this family speaks (chat formats are tied to their tokenizer's special tokens)."""
        return tuple(self.stop_tokens_by_format)

    def stop_tokens(self, prompt_format: str) -> tuple[str, ...]:
        """Tokens that end a generated answer in `prompt_format`, primary first."""
        if prompt_format not in self.stop_tokens_by_format:
            raise ValueError(
                f"Prompt format {prompt_format!r} does not fit the {self.name!r} family; it speaks "
                f"{list(self.prompt_formats)}."
            )
        return self.stop_tokens_by_format[prompt_format]

    @property
    def decoder_layer_cls(self) -> type[nn.Module]:
        return import_dotted(self.decoder_layer)

    def build_packaged_tokenizer(self, prompt_format: str) -> PreTrainedTokenizerBase:
        """The packaged stand-in vocabulary, with the primary stop token of `prompt_format` as its EOS."""
        build: Callable[..., PreTrainedTokenizerBase] = import_dotted(self.packaged_tokenizer)
        return build(eos_token=self.stop_tokens(prompt_format)[0])


_PACKAGED = "prismatic.models.backbones.llm.packaged"

LLAMA2 = LLMFamilyTraits(
    name="llama2",
    display_name="Llama-2",
    stop_tokens_by_format={"base": ("</s>",), "llama2-chat": ("</s>",), "vicuna": ("</s>",)},
    base_eos_token="</s>",
    strip_turns=True,
    bos_on_first_turn=True,
    pad_token="<PAD>",
    adds_pad_token=True,
    pad_to_multiple_of=64,  # 32001 tokens -> 32064 rows, as released (tensor-core friendly)
    special_ids={"<s>": 1, "</s>": 2},
    decoder_layer="transformers.models.llama.modeling_llama.LlamaDecoderLayer",
    packaged_tokenizer=f"{_PACKAGED}.packaged_llama_tokenizer",
    packaged_vocabulary_note=(
        "It is NOT Llama-2's vocabulary (same format and special ids, different text ids): fine for shape-only "
        "builds, wrong for generating with real weights."
    ),
    # The legacy SentencePiece behaviour of the Llama-2 era (every chunk between special tokens gets the dummy-prefix
    # space), which multi-turn prompts need to tokenize as their per-turn training strings.
    tokenizer_kwargs={"legacy": True, "add_bos_token": True},
)

QWEN25 = LLMFamilyTraits(
    name="qwen25",
    display_name="Qwen2.5",
    # Qwen chat stops on <|im_end|> and also on <|endoftext|> (the base models' end of document).
    stop_tokens_by_format={"base": ("<|endoftext|>",), "qwen-chat": ("<|im_end|>", "<|endoftext|>")},
    base_eos_token="<|endoftext|>",
    strip_turns=False,
    bos_on_first_turn=False,  # Qwen has no BOS
    pad_token="<|endoftext|>",
    adds_pad_token=False,
    # The three specials follow the 151,643 BPE tokens.
    special_ids={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645},
    decoder_layer="transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer",
    packaged_tokenizer=f"{_PACKAGED}.packaged_qwen_tokenizer",
    packaged_vocabulary_note="It holds the real Qwen2.5 BPE ranks but only 3 of its special tokens.",
)

LLM_FAMILIES: dict[str, LLMFamilyTraits] = {traits.name: traits for traits in (LLAMA2, QWEN25)}


def get_family_traits(family: str) -> LLMFamilyTraits:
    """The traits of `family`; a ValueError lists the registered families."""
    if family not in LLM_FAMILIES:
        raise ValueError(f"Unknown LLM family {family!r}; registered families are {list(LLM_FAMILIES)}.")
    return LLM_FAMILIES[family]
