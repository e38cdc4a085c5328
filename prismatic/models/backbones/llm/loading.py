"""Build an `LLMBackbone` and its tokenizer from a registry id: hub weights, a local directory, or config only.

Three ways in, all through transformers' own loaders:
- training (`inference_mode=False`): `from_pretrained` on `pretrained_path` or the hub id (fp32; the caller casts);
- inference / shape-only (`inference_mode=True`): the architecture only, from `pretrained_path`'s config.json or the
  in-code registry config, so `with torch.device("meta"):` builds a 7B without weights (a VLM checkpoint fills them);
- tiny ids: seeded random init from the in-code config with the packaged vocabulary (`packaged.py`), or
  `from_pretrained` on `pretrained_path` (the save/load round trip).

Tokenizers follow the released recipe, as each family's traits (`families.py`) say: Llama-2 gets a "<PAD>" token and
embeddings resized to a multiple of 64 (32000 -> 32064); Qwen2.5 keeps its own pad (<|endoftext|>) and has no BOS.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prismatic.models.backbones.llm.base_llm import LLMBackbone
from prismatic.models.backbones.llm.families import LLMFamilyTraits
from prismatic.models.backbones.llm.registry import LLMSpec, get_llm_spec
from prismatic.overwatch import initialize_overwatch

overwatch = initialize_overwatch(__name__)

TINY_INIT_SEED = 7


def default_attn_implementation() -> str:
    """flash-attention 2 when it is installed and a GPU is present, else PyTorch SDPA."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if has_flash and torch.cuda.is_available() else "sdpa"


# === Tokenizer ===
def load_tokenizer(
    spec: LLMSpec, pretrained_path: str | None, hf_token: str | None, inference_mode: bool
) -> tuple[PreTrainedTokenizerBase, bool]:
    """The tokenizer, and whether it is the packaged stand-in for a tokenizer that could not be found."""
    traits = spec.traits
    if spec.tiny and pretrained_path is None:
        return traits.build_packaged_tokenizer(spec.prompt_format), False
    source = pretrained_path or spec.hf_hub_path
    try:
        return AutoTokenizer.from_pretrained(source, token=hf_token, **traits.tokenizer_kwargs), False
    except (OSError, ValueError) as error:
        if not inference_mode:
            raise OSError(
                f"Could not load the tokenizer of {source!r} ({error}). Pass `pretrained_path` to a local copy "
                "(config, weights and tokenizer files), or log in / pass `hf_token` for gated hub models."
            ) from error
        overwatch.warning(
            f"No tokenizer at {source!r} ({type(error).__name__}); using the packaged {traits.name} vocabulary. "
            + traits.packaged_vocabulary_note
        )
        return traits.build_packaged_tokenizer(spec.prompt_format), True


def _check_tokenizer(traits: LLMFamilyTraits, prompt_format: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """The VLM splices visual tokens after token 0: BOS for Llama-2, the prompt's first token for Qwen (no BOS)."""
    with_specials = tokenizer("Testing 123", add_special_tokens=True).input_ids
    without = tokenizer("Testing 123", add_special_tokens=False).input_ids
    name = type(tokenizer).__name__
    if traits.bos_on_first_turn and (with_specials[0] != tokenizer.bos_token_id or without[0] == tokenizer.bos_token_id):
        raise ValueError(f"The {traits.display_name} tokenizer {name} must prefix inputs with BOS.")
    if not traits.bos_on_first_turn and with_specials != without:
        raise ValueError(f"The {traits.display_name} tokenizer {name} must not add special tokens (no BOS).")
    for token in traits.stop_tokens(prompt_format):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.decode([token_id]) != token:
            raise ValueError(f"Tokenizer {name} lacks the stop token {token!r} of {traits.display_name}.")


# === Model ===
@contextlib.contextmanager
def _seeded_init() -> Iterator[None]:
    """A private RNG stream for random inits: the same weights on every call, the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_INIT_SEED)
        yield


def _from_config_seeded(config: object, attn_implementation: str) -> PreTrainedModel:
    with _seeded_init():
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)


def load_llm(
    spec: LLMSpec, pretrained_path: str | None, hf_token: str | None, inference_mode: bool, attn_implementation: str
) -> PreTrainedModel:
    if pretrained_path is None and (spec.tiny or inference_mode):
        return _from_config_seeded(spec.build_config(), attn_implementation)
    source = pretrained_path or spec.hf_hub_path
    if inference_mode:
        return _from_config_seeded(AutoConfig.from_pretrained(source, token=hf_token), attn_implementation)
    return AutoModelForCausalLM.from_pretrained(
        source, token=hf_token, dtype=torch.float32, attn_implementation=attn_implementation
    )


def _set_pad_token(traits: LLMFamilyTraits, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    if not traits.adds_pad_token:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = traits.pad_token
        return
    if tokenizer.pad_token != traits.pad_token:
        tokenizer.add_special_tokens({"pad_token": traits.pad_token})
    # A no-op when already resized. New rows get the standard init, not the mean of old rows (which would also need
    # real tensors on `meta`).
    with _seeded_init():
        llm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=traits.pad_to_multiple_of, mean_resizing=False)


def _prepare(
    spec: LLMSpec, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, llm_max_length: int, inference_mode: bool
) -> None:
    """Pad token, vocabulary size, cache and generation defaults, shared by every way of loading."""
    traits = spec.traits
    _set_pad_token(traits, llm, tokenizer)
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model only "
            f"{llm.get_input_embeddings().num_embeddings} embeddings; tokenizer and weights do not belong together."
        )
    _check_tokenizer(traits, spec.prompt_format, tokenizer)
    tokenizer.model_max_length = llm_max_length
    tokenizer.padding_side = traits.padding_side

    llm.config.pad_token_id = tokenizer.pad_token_id
    llm.config.use_cache = inference_mode  # no KV cache while training (and none under gradient checkpointing)
    # A clean generation config: the hub's (e.g. Qwen-Instruct's top_k / repetition_penalty) is not inherited.
    eos_ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in traits.stop_tokens(spec.prompt_format)]
    llm.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id
    )


def get_llm_backbone_and_tokenizer(
    llm_backbone_id: str,
    llm_max_length: int = 2048,
    hf_token: str | None = None,
    inference_mode: bool = False,
    pretrained_path: str | None = None,
    attn_implementation: str | None = None,
) -> tuple[LLMBackbone, PreTrainedTokenizerBase]:
    """Build the registered LLM `llm_backbone_id` and its tokenizer (see the module docstring for the sources).

    `inference_mode=True` never reads weights, and falls back to the packaged vocabulary (with a warning, and
    `backbone.tokenizer_is_fallback` set) when the tokenizer cannot be found. `attn_implementation` defaults to
    flash-attention 2 when it is installed and CUDA is available, else "sdpa".
    """
    spec = get_llm_spec(llm_backbone_id)
    attn = attn_implementation or default_attn_implementation()
    where = pretrained_path or spec.hf_hub_path or "in-code config (packaged vocabulary)"
    mode = "architecture only" if inference_mode else "weights"
    overwatch.info(f"Loading LLM {llm_backbone_id!r} ({mode}) from {where} with attention {attn!r}")
    tokenizer, fallback = load_tokenizer(spec, pretrained_path, hf_token, inference_mode)
    llm = load_llm(spec, pretrained_path, hf_token, inference_mode, attn)
    _prepare(spec, llm, tokenizer, llm_max_length, inference_mode)
    backbone = LLMBackbone(llm_backbone_id, spec, llm, tokenizer, llm_max_length=llm_max_length)
    backbone.tokenizer_is_fallback = fallback
    return backbone, tokenizer
