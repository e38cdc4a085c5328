"""The assembled VLM: tiny DyVA forward/backward, freezing per stage, mixed batches, multi-frame input, 7B builds."""

from dataclasses import replace

import pytest
import torch
from PIL import Image

from prismatic.assembly import build_vlm
from prismatic.conf.models import get_model_config
from prismatic.models.backbones.vision.base_vision import collate_pixel_values
from prismatic.models.materialize import get_vision_backbone_and_transform
from prismatic.models.registry import MODEL_REGISTRY, resolve_model_id


def _image(seed: int, size: int = 64) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy())


def _batch(vlm, conversations, images):
    """Tokenize conversations and transform images the way the data pipeline does (right padding, image rows only)."""
    transform = vlm.vision_backbone.get_image_transform()
    pairs = [vlm.llm_backbone.tokenize_conversation(c) for c in conversations]
    length = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), length), vlm.llm_backbone.pad_token_id)
    labels = torch.full((len(pairs), length), -100)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    for i, (ids, lab) in enumerate(pairs):
        input_ids[i, : len(ids)], labels[i, : len(ids)], mask[i, : len(ids)] = ids, lab, 1
    has_image = torch.tensor([im is not None for im in images])
    pixel_values = collate_pixel_values([transform(im) for im in images if im is not None]) if has_image.any() else None
    return dict(input_ids=input_ids, attention_mask=mask, labels=labels, pixel_values=pixel_values, has_image=has_image)


CONV = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A red square."}]
TEXT_CONV = [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi there."}]


@pytest.fixture(scope="module")
def tiny_dyva():
    vlm = build_vlm("dyva_siglip+tiny")
    vlm.freeze_backbones("finetune")
    return vlm


def test_tiny_dyva_forward_backward_trains_projector_and_llm_only(tiny_dyva):
    batch = _batch(tiny_dyva, [CONV, CONV], [_image(0), [_image(1), _image(2)]])
    out = tiny_dyva(**batch)
    assert torch.isfinite(out.loss)
    assert out.logits.shape[1] == batch["input_ids"].shape[1] + tiny_dyva.num_visual_tokens
    tiny_dyva.zero_grad(set_to_none=True)
    out.loss.backward()
    for name, p in tiny_dyva.named_parameters():
        if name.startswith("vision_backbone."):
            assert p.grad is None and not p.requires_grad, name
    assert all(p.grad is not None for p in tiny_dyva.projector.parameters())
    assert tiny_dyva.llm_backbone.llm.get_input_embeddings().weight.grad.abs().sum() > 0


def test_text_only_and_mixed_batches_keep_row_results(tiny_dyva):
    tiny_dyva.eval()
    with torch.no_grad():
        mixed = tiny_dyva(**_batch(tiny_dyva, [TEXT_CONV, CONV], [None, _image(3)]))
        text = tiny_dyva(**_batch(tiny_dyva, [TEXT_CONV], [None]))
        image = tiny_dyva(**_batch(tiny_dyva, [CONV], [_image(3)]))
    n_text = _batch(tiny_dyva, [TEXT_CONV], [None])["input_ids"].shape[1]
    # Row 0 is text-only: its logits equal the text-only batch's on its real tokens; row 1 equals the image batch's.
    torch.testing.assert_close(mixed.logits[0, :n_text], text.logits[0], atol=1e-4, rtol=1e-4)
    n_image = image.logits.shape[1]
    torch.testing.assert_close(mixed.logits[1, :n_image], image.logits[0], atol=1e-4, rtol=1e-4)
    assert torch.isfinite(text.loss)


def test_multi_frame_changes_only_the_svd_stream(tiny_dyva):
    backbone = tiny_dyva.vision_backbone
    transform = backbone.get_image_transform()
    one = backbone(collate_pixel_values([transform(_image(4))]))
    three = backbone(collate_pixel_values([transform([_image(4), _image(5), _image(6)])]))
    assert torch.equal(one["vit"], three["vit"])
    assert not torch.allclose(one["svd"], three["svd"])


def test_qwen_tiny_dyva_learns_only_the_answer():
    vlm = build_vlm("dyva_siglip_qwen+tiny")
    vlm.freeze_backbones("finetune")
    batch = _batch(vlm, [CONV], [_image(7)])
    tok = vlm.llm_backbone.tokenizer
    learned = batch["labels"][0][batch["labels"][0] != -100]
    assert tok.decode(learned) == "A red square.<|im_end|>\n"
    assert tok.convert_ids_to_tokens(int(batch["input_ids"][0, 0])) == "<|im_start|>"
    assert torch.isfinite(vlm(**batch).loss)


def test_unet_stage_sends_gradients_into_the_unet_down_path():
    vlm = build_vlm("dyva_siglip+tiny")
    vlm.freeze_backbones("finetune-unet")
    vlm(**_batch(vlm, [CONV], [_image(8)])).loss.backward()
    unet = vlm.vision_backbone.generative.unet
    assert unet.down_blocks[0].resnets[0].spatial_res_block.conv1.weight.grad.abs().sum() > 0
    assert unet.mid_block is None and unet.up_blocks is None  # never run in release pre-mid mode, so never built
    assert all(p.grad is None for p in vlm.vision_backbone.static.parameters())


def test_vae_only_stem_trains_in_finetune():
    cfg = replace(get_model_config("dyva_siglip+tiny"), model_id="vae-tiny", vision_backbone_id="tiny-vae-only",
                  arch_specifier="no-align+fused-gelu-mlp")  # fmt: skip
    vlm = build_vlm(cfg)
    vlm.freeze_backbones("finetune")
    vlm(**_batch(vlm, [CONV], [_image(9)])).loss.backward()
    stem = [p for n, p in vlm.vision_backbone.named_parameters() if ".stem." in f".{n}"]
    assert stem and all(p.grad is not None for p in stem)
    assert all(p.grad is None for n, p in vlm.vision_backbone.named_parameters() if n.startswith("vae."))


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ["dyva_siglip+7b", "dyva_siglip_qwen+7b"])
def test_7b_models_build_on_meta_with_648_visual_tokens(model_id):
    with torch.device("meta"):
        vlm = build_vlm(model_id, load_weights=False)
    assert vlm.num_visual_tokens == 648
    assert [(s.name, s.embed_dim, s.num_tokens) for s in vlm.vision_backbone.streams] == [
        ("vit", 1152, 256),
        ("svd", 1280, 392),
    ]
    counts = vlm.parameter_counts()
    d = 4096 if model_id == "dyva_siglip+7b" else 3584
    dual = (1152 * 4608 + 4608 + 4608 * d + d) + (1280 * 5120 + 5120 + 5120 * d + d) + (d * d + d)
    assert counts["projector"] == dual
    assert counts["llm_backbone"] == {4096: 6_738_939_904, 3584: 7_615_616_512}[d]
    assert 1.0e9 < counts["vision_backbone"] < 2.0e9  # SigLIP so400m (truncated) + SVD VAE encoder, CLIP-H, U-Net down
    print(model_id, counts)


def test_registry_aliases_and_every_entry_is_consistent():
    assert resolve_model_id("dyva_siglip") == "dyva_siglip+7b"
    assert resolve_model_id("dyva-clip+7b") == "dyva_clip+7b"
    for spec in MODEL_REGISTRY.values():
        assert spec.model_id.endswith(("+7b", "+tiny")), spec.model_id
    with pytest.raises(ValueError, match=r"registered ids are: .*dyva_siglip\+7b"):
        resolve_model_id("dyva_siglip+70b")


def test_user_errors_say_what_to_do():
    with pytest.raises(ValueError, match="valid ids are"):
        get_vision_backbone_and_transform("siglip-vit-huge")
    with pytest.raises(ValueError, match="valid values are"):
        get_vision_backbone_and_transform("tiny-siglip", "stretch")
    _, transform = get_vision_backbone_and_transform("tiny-siglip+svd")
    with pytest.raises(ValueError, match=r"convert\('RGB'\)"):
        transform(_image(0).convert("L"))
    with pytest.raises(ValueError, match="valid forms are"):
        build_vlm(replace(get_model_config("dyva_siglip+tiny"), model_id="x", arch_specifier="dual"))
    too_many = [_image(i) for i in range(9)]
    with pytest.raises(ValueError, match="9"):
        transform(too_many)
