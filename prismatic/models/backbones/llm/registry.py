"""Registry of LLM backbones: hub id, family, prompt format and the published architecture of every LLM id.

The architecture lives in code (not only on the hub) so that any id builds without network access, e.g. a 7B model
under `with torch.device("meta"):` when a VLM checkpoint will provide the weights. Real loads read the hub's (or a
local directory's) config.json instead; the in-code numbers are the published ones:

| model            | hidden | MLP   | layers | heads | kv heads | vocab  | tied |
| Llama-2-7B       | 4096   | 11008 | 32     | 32    | 32       | 32000  | no   |
| Llama-2-13B      | 5120   | 13824 | 40     | 40    | 40       | 32000  | no   |
| Qwen2.5-0.5B     | 896    | 4864  | 24     | 14    | 2        | 151936 | yes  |
| Qwen2.5-1.5B     | 1536   | 8960  | 28     | 12    | 2        | 151936 | yes  |
| Qwen2.5-3B       | 2048   | 11008 | 36     | 16    | 2        | 151936 | yes  |
| Qwen2.5-7B       | 3584   | 18944 | 28     | 28    | 4        | 152064 | no   |

Llama-2 (and Vicuna v1.5): context 4096, RMSNorm eps 1e-5, RoPE theta 1e4. Qwen2.5: context 32768, eps 1e-6, RoPE
theta 1e6, biases on q/k/v (built into transformers' Qwen2 attention). Tiny ids are 2-layer, width-128 models with
the real vocabulary sizes, for CPU tests.

What a family does differently (prompt formats, tokenization, pad and stop tokens) is in `families.py`. Importing this
module does not import transformers (the config layer imports it on `--help`); the configs are built on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from prismatic.models.backbones.llm.families import LLAMA2, QWEN25, LLMFamilyTraits, get_family_traits
from prismatic.models.backbones.llm.prompting import PromptFormat

if TYPE_CHECKING:
    from transformers import LlamaConfig, PretrainedConfig, Qwen2Config


# The config classes are imported inside the builders: the config layer imports this module even for `--help`.
def llama2_config(
    hidden_size: int, intermediate_size: int, num_layers: int, num_heads: int, max_positions: int = 4096
) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        bos_token_id=LLAMA2.special_ids["<s>"],
        eos_token_id=LLAMA2.special_ids["</s>"],
        tie_word_embeddings=False,
    )


def qwen25_config(
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    tie_word_embeddings: bool,
    instruct: bool,
    vocab_size: int = 151936,
) -> Qwen2Config:
    from transformers import Qwen2Config

    endoftext, im_end = QWEN25.special_ids["<|endoftext|>"], QWEN25.special_ids["<|im_end|>"]
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=tie_word_embeddings,
        use_sliding_window=False,
        # As the hub configs: base models end documents with <|endoftext|>, Instruct models end turns with <|im_end|>.
        bos_token_id=endoftext,
        eos_token_id=im_end if instruct else endoftext,
    )


@dataclass(frozen=True)
class LLMSpec:
    """One registered LLM. `family` keys `families.LLM_FAMILIES` (see `traits`); `hf_hub_path` is None for tiny ids,
    which have no hub twin."""

    hf_hub_path: str | None
    family: str
    prompt_format: PromptFormat
    config_factory: Callable[[], PretrainedConfig]
    tiny: bool = False

    def __post_init__(self) -> None:
        self.traits.stop_tokens(self.prompt_format)  # raises for a format the family does not speak
        if self.hf_hub_path is None and not self.tiny:
            raise ValueError("Only tiny LLM specs may omit `hf_hub_path`.")

    @property
    def traits(self) -> LLMFamilyTraits:
        return get_family_traits(self.family)

    def build_config(self) -> PretrainedConfig:
        """A fresh architecture config (a new object each call, so callers may edit it)."""
        return self.config_factory()


_LLAMA2_7B = partial(llama2_config, 4096, 11008, 32, 32)
_LLAMA2_13B = partial(llama2_config, 5120, 13824, 40, 40)

# Qwen2.5 sizes: (hidden, MLP, layers, heads, kv heads, tied embeddings, vocab)
_QWEN25_SIZES: dict[str, tuple[int, int, int, int, int, bool, int]] = {
    "0_5b": (896, 4864, 24, 14, 2, True, 151936),
    "1_5b": (1536, 8960, 28, 12, 2, True, 151936),
    "3b": (2048, 11008, 36, 16, 2, True, 151936),
    "7b": (3584, 18944, 28, 28, 4, False, 152064),
}


def _qwen25_specs() -> dict[str, LLMSpec]:
    specs: dict[str, LLMSpec] = {}
    for size, (hidden, mlp, layers, heads, kv_heads, tied, vocab) in _QWEN25_SIZES.items():
        hub_size = size.replace("_", ".").upper()  # "0_5b" -> "0.5B"
        for variant, instruct in (("pure", False), ("chat", True)):
            factory = partial(qwen25_config, hidden, mlp, layers, heads, kv_heads, tied, instruct, vocab)
            specs[f"qwen25-{size}-{variant}"] = LLMSpec(
                hf_hub_path=f"Qwen/Qwen2.5-{hub_size}" + ("-Instruct" if instruct else ""),
                family="qwen25",
                prompt_format="qwen-chat" if instruct else "base",
                config_factory=factory,
            )
    return specs


LLM_BACKBONES: dict[str, LLMSpec] = {
    # === Llama-2 (base "pure" and chat) and Vicuna v1.5 (a Llama-2 fine-tune with the same architecture) ===
    "llama2-7b-pure": LLMSpec("meta-llama/Llama-2-7b-hf", "llama2", "base", _LLAMA2_7B),
    "llama2-7b-chat": LLMSpec("meta-llama/Llama-2-7b-chat-hf", "llama2", "llama2-chat", _LLAMA2_7B),
    "llama2-13b-pure": LLMSpec("meta-llama/Llama-2-13b-hf", "llama2", "base", _LLAMA2_13B),
    "llama2-13b-chat": LLMSpec("meta-llama/Llama-2-13b-chat-hf", "llama2", "llama2-chat", _LLAMA2_13B),
    "vicuna-v15-7b": LLMSpec("lmsys/vicuna-7b-v1.5", "llama2", "vicuna", _LLAMA2_7B),
    "vicuna-v15-13b": LLMSpec("lmsys/vicuna-13b-v1.5", "llama2", "vicuna", _LLAMA2_13B),
    # === Qwen2.5 base ("-pure") and Instruct ("-chat") ===
    **_qwen25_specs(),
    # === Tiny twins: 2 layers, width 128, 8 heads of 16, real vocabularies (packaged), seeded random weights ===
    # (Sized for the CPU demo, trained from scratch on six question types: at width 64 with 4 heads the motion
    # questions stayed at chance for as long as the demo trains; see docs/demo-random-encoder.md.)
    "tiny-llama2": LLMSpec(None, "llama2", "base", partial(llama2_config, 128, 256, 2, 8), tiny=True),
    "tiny-qwen25": LLMSpec(
        None, "qwen25", "qwen-chat", partial(qwen25_config, 128, 256, 2, 8, 2, True, True), tiny=True
    ),
}


def get_llm_spec(llm_backbone_id: str) -> LLMSpec:
    """The registry entry of `llm_backbone_id`; a ValueError lists the valid ids."""
    if llm_backbone_id not in LLM_BACKBONES:
        raise ValueError(
            f"Unknown LLM backbone id {llm_backbone_id!r}; valid ids are: {', '.join(sorted(LLM_BACKBONES))}."
        )
    return LLM_BACKBONES[llm_backbone_id]
