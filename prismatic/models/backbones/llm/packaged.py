"""The packaged vocabularies: tokenizers that build offline, for tiny ids and as stand-ins for unreachable hub ones.

`llama-format-32k.model` is SentencePiece in the Llama-2 format, but with Mistral-7B's pieces: the same special ids
0/1/2, other ids than Llama-2 for text. `qwen2-151k.tiktoken` holds the real Qwen2/Qwen2.5 BPE ranks. Each family's
traits name its builder here (`LLMFamilyTraits.packaged_tokenizer`); both take the EOS the prompt format stops on.
"""

from __future__ import annotations

import functools
from pathlib import Path

from transformers import LlamaTokenizer, PreTrainedTokenizerBase, Qwen2Tokenizer
from transformers.convert_slow_tokenizer import TikTokenConverter

TOKENIZER_ASSETS = Path(__file__).resolve().parents[3] / "assets" / "tokenizers"
LLAMA_VOCAB_FILE = TOKENIZER_ASSETS / "llama-format-32k.model"
QWEN_RANKS_FILE = TOKENIZER_ASSETS / "qwen2-151k.tiktoken"

QWEN_ENDOFTEXT, QWEN_CHAT_SPECIALS = "<|endoftext|>", ("<|im_start|>", "<|im_end|>")


def _with_eos(tokenizer: PreTrainedTokenizerBase, eos_token: str) -> PreTrainedTokenizerBase:
    if eos_token != tokenizer.eos_token:
        tokenizer.eos_token = eos_token
    return tokenizer


def packaged_llama_tokenizer(eos_token: str = "</s>") -> PreTrainedTokenizerBase:
    """Llama-2-format tokenizer from the packaged SentencePiece model (legacy mode, BOS added, no pad yet)."""
    kwargs = LlamaTokenizer.convert_to_native_format(vocab_file=str(LLAMA_VOCAB_FILE), legacy=True)
    return _with_eos(LlamaTokenizer(**kwargs, add_bos_token=True), eos_token)


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
    return _with_eos(tokenizer, eos_token)
