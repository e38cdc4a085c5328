"""Generation on tiny models (CPU): the README inference snippet, batching, multi-frame input, sampling and stopping."""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from prismatic.assembly import build_vlm
from prismatic.models.vlms.generation import generate_token_ids, prepare_pixel_values, splice_prompts, tokenize_prompts


def _image(seed: int, size: int = 64) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy())


def _prompt(vlm, question: str) -> str:
    builder = vlm.get_prompt_builder()
    builder.add_turn(role="human", message=question)
    return builder.get_prompt()


@contextmanager
def _lm_head_hook(vlm, hook) -> Iterator[None]:
    """Rewrite the LLM's logits with `hook(module, inputs, output)` on every call while the context is open."""
    handle = vlm.llm_backbone.llm.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _biased_token(vlm, token_id: int, bias: float, from_call: int = 0, rows: list[int] | None = None):
    """Add `bias` to one token's logit (like a bias on the lm_head), from the `from_call`-th LLM call on (0 = the
    prefill), for the given batch rows (default all)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        if calls["n"] - 1 < from_call:
            return output
        output = output.clone()
        index = slice(None) if rows is None else rows
        output[index, :, token_id] += bias
        return output

    return _lm_head_hook(vlm, hook)


@pytest.fixture(scope="module")
def llama_vlm():
    return build_vlm("dyva_siglip+tiny")


@pytest.fixture(scope="module")
def qwen_vlm():
    return build_vlm("dyva_siglip_qwen+tiny")


def test_readme_snippet_verbatim_in_bf16_on_cpu():
    vlm = build_vlm("dyva_siglip+tiny")
    vlm.train()  # generate must give the model back in the mode it found it in
    device, image = "cpu", _image(0)
    # --- README "Inference", verbatim after `load` ---
    vlm.to(device, dtype=torch.bfloat16)
    prompt_builder = vlm.get_prompt_builder()
    prompt_builder.add_turn(role="human", message="What is in the image and what is going on?")
    text = vlm.generate(image, prompt_builder.get_prompt(), do_sample=True, temperature=0.4,
                        max_new_tokens=1024, min_length=1)  # fmt: skip
    # ---
    assert isinstance(text, str)
    assert vlm.training
    assert all(p.dtype == torch.bfloat16 for p in vlm.llm_backbone.parameters())


def test_prompt_ids_are_the_training_prefix(llama_vlm, qwen_vlm):
    for vlm in (llama_vlm, qwen_vlm):
        conversation = [{"from": "human", "value": "<image>\nWhat moved?"}, {"from": "gpt", "value": "The ball."}]
        train_ids, labels = vlm.llm_backbone.tokenize_conversation(conversation)
        prefix = train_ids[labels == -100]
        ids, mask = tokenize_prompts(vlm.llm_backbone, [_prompt(vlm, "<image>\nWhat moved?")])
        assert torch.equal(ids[0], prefix) and bool(mask.all())
    tokenizer = qwen_vlm.llm_backbone.tokenizer
    assert tokenizer.convert_ids_to_tokens(int(ids[0, 0])) == "<|im_start|>"  # Qwen: no BOS, token 0 is the chat start


@pytest.mark.parametrize("model", ["llama_vlm", "qwen_vlm"])
def test_batched_greedy_equals_one_by_one(model, request):
    vlm = request.getfixturevalue(model)
    questions = ["Hi?", "What is going on in this long question about the three frames?", "Say hi.", "Colour?"]
    prompts = [_prompt(vlm, q) for q in questions]
    images = [_image(1), [_image(2), _image(3), _image(4)], None, _image(5)]
    # min_length = max_new_tokens: every row decodes all 12 steps, so the comparison covers the whole loop.
    options = dict(max_new_tokens=12, min_length=12)
    batched = generate_token_ids(vlm, images, prompts, **options)
    single = [generate_token_ids(vlm, im, p, **options)[0] for im, p in zip(images, prompts)]
    assert batched == single
    assert all(len(ids) == 12 for ids in batched)
    assert vlm.generate(images, prompts, **options) == [vlm.generate(im, p, **options) for im, p in zip(images, prompts)]


def test_multi_frame_changes_only_the_svd_stream_and_the_logits(llama_vlm):
    vlm, prompt = llama_vlm, _prompt(llama_vlm, "Where does it move?")
    ids, mask = tokenize_prompts(vlm.llm_backbone, [prompt])
    features, logits = [], []
    with torch.inference_mode():
        for images in (_image(6), [_image(6), _image(7), _image(8)]):
            pixel_values, has_image = prepare_pixel_values(vlm, [images], torch.device("cpu"))
            features.append(vlm.vision_backbone(pixel_values))
            spliced = splice_prompts(vlm, ids, mask, pixel_values, has_image)
            output = vlm.llm_backbone(spliced.inputs_embeds, spliced.attention_mask, position_ids=spliced.position_ids)
            logits.append(output.logits[:, -1])
    assert torch.equal(features[0]["vit"], features[1]["vit"])
    assert not torch.allclose(features[0]["svd"], features[1]["svd"])
    assert not torch.allclose(logits[0], logits[1])


def test_sampling_with_a_seed_is_reproducible_and_leaves_the_global_rng(llama_vlm):
    vlm, prompt, image = llama_vlm, _prompt(llama_vlm, "Describe it."), _image(9)
    options = dict(do_sample=True, temperature=1.0, top_k=50, top_p=0.95, max_new_tokens=10, min_length=10)
    rng_state = torch.get_rng_state()
    first = generate_token_ids(vlm, image, prompt, seed=1, **options)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert generate_token_ids(vlm, image, prompt, seed=1, **options) == first
    assert generate_token_ids(vlm, image, prompt, seed=2, **options) != first


def test_eos_stops_but_not_before_min_length(llama_vlm):
    vlm, prompt, image = llama_vlm, _prompt(llama_vlm, "Anything?"), _image(10)
    eos = vlm.llm_backbone.eos_token_ids[0]
    with _biased_token(vlm, eos, 1e4):
        assert generate_token_ids(vlm, image, prompt, max_new_tokens=8) == [[]]
        assert vlm.generate(image, prompt, max_new_tokens=8) == ""
        ids = generate_token_ids(vlm, image, prompt, max_new_tokens=8, min_length=5)
    assert len(ids[0]) == 5 and eos not in ids[0]


def test_eos_stops_each_row_on_its_own(llama_vlm):
    vlm = llama_vlm
    prompts = [_prompt(vlm, "First?"), _prompt(vlm, "Second, longer question?")]
    eos = vlm.llm_backbone.eos_token_ids[0]
    with _biased_token(vlm, eos, -1e4):  # nobody stops by chance
        expected = generate_token_ids(vlm, [_image(11), None], prompts, max_new_tokens=9)
        with _biased_token(vlm, eos, 2e4, from_call=3, rows=[0]):  # row 0 emits EOS as its 4th token
            ids = generate_token_ids(vlm, [_image(11), None], prompts, max_new_tokens=9)
    assert ids == [expected[0][:3], expected[1]] and len(expected[1]) == 9


def test_qwen_stops_on_either_stop_token(qwen_vlm):
    prompt = _prompt(qwen_vlm, "Anything?")
    for stop_id in qwen_vlm.llm_backbone.eos_token_ids:  # <|im_end|> and <|endoftext|>
        with _biased_token(qwen_vlm, stop_id, 1e4, from_call=2):
            assert len(generate_token_ids(qwen_vlm, None, prompt, max_new_tokens=6)[0]) == 2


def test_max_new_tokens_is_respected(llama_vlm):
    vlm, prompt = llama_vlm, _prompt(llama_vlm, "Count.")
    with _biased_token(vlm, vlm.llm_backbone.eos_token_ids[0], -1e4):
        for n in (1, 7):
            assert [len(ids) for ids in generate_token_ids(vlm, [_image(12), None], [prompt, prompt],
                                                           max_new_tokens=n)] == [n, n]  # fmt: skip


def test_generate_restores_each_module_mode(llama_vlm):
    vlm = llama_vlm
    vlm.train()
    vlm.vision_backbone.eval()
    vlm.generate(_image(13), _prompt(vlm, "Hi?"), max_new_tokens=2)
    assert vlm.training and vlm.llm_backbone.training and not vlm.vision_backbone.training
    vlm.eval()


def test_siglip_only_baseline_sees_the_first_frame_only():
    vlm = build_vlm("prism_siglip+tiny")
    prompts = [_prompt(vlm, "Hi?"), _prompt(vlm, "What moved?")]
    options = dict(max_new_tokens=4, min_length=4)
    batched = generate_token_ids(vlm, [[_image(14), _image(15)], None], prompts, **options)
    assert batched[0] == generate_token_ids(vlm, _image(14), prompts[0], **options)[0]
    assert batched[1] == generate_token_ids(vlm, None, prompts[1], **options)[0]


def test_user_errors_say_what_to_do(llama_vlm):
    vlm, prompt = llama_vlm, _prompt(llama_vlm, "Hi?")
    with pytest.raises(ValueError, match="one entry per prompt"):
        vlm.generate([_image(0)], [prompt, prompt])
    with pytest.raises(TypeError, match="one entry per prompt"):
        vlm.generate(_image(0), [prompt, prompt])
    with pytest.raises(ValueError, match=r"convert\('RGB'\)"):
        vlm.generate(_image(0).convert("L"), prompt)
    with pytest.raises(TypeError, match="PIL"):
        vlm.generate("photo.png", prompt)
    with pytest.raises(TypeError, match="supported options"):
        vlm.generate(_image(0), prompt, num_beams=4)
    with pytest.raises(ValueError, match="do_sample=False"):
        vlm.generate(_image(0), prompt, do_sample=True, temperature=0.0)


def test_fallback_tokenizer_warns(llama_vlm):
    llama_vlm.llm_backbone.tokenizer_is_fallback = True
    try:
        with pytest.warns(UserWarning, match="STAND-IN TOKENIZER"):
            llama_vlm.generate(None, _prompt(llama_vlm, "Hi?"), max_new_tokens=1)
    finally:
        llama_vlm.llm_backbone.tokenizer_is_fallback = False


def _fixed_next_token_distribution(vlm, probs: dict[int, float]):
    """Make every LLM step predict exactly `probs` (token id -> probability; every other token impossible)."""

    def hook(module, inputs, output):
        logits = torch.full_like(output, float("-inf"))
        for token_id, p in probs.items():
            logits[..., token_id] = torch.log(torch.tensor(p))
        return logits

    return _lm_head_hook(vlm, hook)


def test_temperature_top_k_and_top_p_keep_the_right_tokens(llama_vlm):
    vlm, prompt = llama_vlm, _prompt(llama_vlm, "Pick.")
    a, b, c, d = 100, 200, 300, 400

    def drawn(rows: int = 64, **options) -> set[int]:
        """The first new tokens of `rows` independent draws."""
        ids = generate_token_ids(vlm, None, [prompt] * rows, do_sample=True, max_new_tokens=1, seed=0, **options)
        return {row[0] for row in ids}

    with _fixed_next_token_distribution(vlm, {a: 0.5, b: 0.3, c: 0.15, d: 0.05}):
        assert drawn() == {a, b, c, d}
        assert drawn(top_k=2) == {a, b}
        assert drawn(top_p=0.8) == {a, b}  # 0.5 + 0.3 reaches 0.8: the rest goes
        assert drawn(top_p=0.81) == {a, b, c}
        assert drawn(top_p=0.1) == {a}  # the top token always stays
        assert drawn(temperature=0.05) == {a}  # a cold distribution is (practically) greedy
        assert drawn(top_k=3, top_p=0.95) == {a, b, c}
    with _fixed_next_token_distribution(vlm, {1000 + i: 1 / 80 for i in range(80)}):
        assert len(drawn(rows=160)) > 50  # nothing filtered unless asked (transformers' own default would be top_k=50)


def test_sampling_without_a_seed_uses_the_global_rng(llama_vlm):
    vlm, prompt = llama_vlm, _prompt(llama_vlm, "Describe it.")
    options = dict(do_sample=True, max_new_tokens=6, min_length=6)
    torch.manual_seed(5)
    first = generate_token_ids(vlm, None, prompt, **options)
    advanced = torch.get_rng_state()
    torch.manual_seed(5)
    assert generate_token_ids(vlm, None, prompt, **options) == first
    assert not torch.equal(advanced, torch.manual_seed(5).get_state())


def test_hub_generation_defaults_do_not_leak(llama_vlm):
    vlm, prompt, image = llama_vlm, _prompt(llama_vlm, "Describe it."), _image(17)
    calls = [dict(max_new_tokens=6), dict(do_sample=True, seed=6, max_new_tokens=6, min_length=6)]
    expected = [generate_token_ids(vlm, image, prompt, **options) for options in calls]
    clean = vlm.llm_backbone.llm.generation_config
    hub = copy.deepcopy(clean)
    hub.update(do_sample=True, temperature=0.01, top_k=1, top_p=0.1, repetition_penalty=1.5, max_length=3, min_length=2)
    vlm.llm_backbone.llm.generation_config = hub
    try:
        got = [generate_token_ids(vlm, image, prompt, **options) for options in calls]
    finally:
        vlm.llm_backbone.llm.generation_config = clean
    assert got == expected


def test_greedy_ignores_sampling_options(llama_vlm):
    vlm, prompt, image = llama_vlm, _prompt(llama_vlm, "Describe it."), _image(16)
    greedy = generate_token_ids(vlm, image, prompt, max_new_tokens=6, min_length=6)
    assert generate_token_ids(vlm, image, prompt, max_new_tokens=6, min_length=6, temperature=0.3, top_k=1,
                              top_p=0.2, seed=3) == greedy  # fmt: skip
    # and sampling with a one-token support is greedy too
    assert generate_token_ids(vlm, image, prompt, max_new_tokens=6, min_length=6, do_sample=True, top_k=1) == greedy
