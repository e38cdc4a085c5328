"""Visual-token placement (docs/model.md): after the first real token, masks and labels, text-only rows, left padding."""

import torch

from prismatic.models.vlms.splice import IGNORE_INDEX, splice_visual_tokens


def _inputs():
    batch, length, dim = 3, 5, 2
    embeds = torch.arange(batch * length * dim, dtype=torch.float).view(batch, length, dim) + 1
    labels = torch.arange(batch * length).view(batch, length)
    return embeds, labels


def test_right_padded_mixed_batch_keeps_rows_and_places_tokens_after_token_zero():
    embeds, labels = _inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    visual = -torch.ones(2, 2, 2)
    has_image = torch.tensor([True, False, True])
    out = splice_visual_tokens(embeds, mask, visual, has_image, labels, "right")
    assert out.inputs_embeds.shape == (3, 7, 2)
    # Image row: token 0, 2 visual tokens, then the rest.
    assert torch.equal(out.inputs_embeds[0, 0], embeds[0, 0])
    assert torch.equal(out.inputs_embeds[0, 1:3], visual[0])
    assert torch.equal(out.inputs_embeds[0, 3:7], embeds[0, 1:5])
    assert out.attention_mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert out.labels[0].tolist() == [0, IGNORE_INDEX, IGNORE_INDEX, 1, 2, 3, 4]
    # Text-only row: unchanged, padded at the end with masked, ignored positions.
    assert torch.equal(out.inputs_embeds[1, :5], embeds[1])
    assert out.inputs_embeds[1, 5:].abs().sum() == 0
    assert out.attention_mask[1].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert out.labels[1, 5:].tolist() == [IGNORE_INDEX] * 2
    assert out.position_ids[2, :5].tolist() == [0, 1, 2, 3, 4]


def test_left_padded_rows_place_visual_tokens_after_their_first_real_token():
    embeds, _ = _inputs()
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    visual = -torch.ones(2, 2, 2)
    has_image = torch.tensor([True, False, True])
    out = splice_visual_tokens(embeds, mask, visual, has_image, None, "left")
    assert out.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]]
    assert torch.equal(out.inputs_embeds[0, 3:5], visual[0])
    assert torch.equal(out.inputs_embeds[2, 4:6], visual[1])
    assert torch.equal(out.inputs_embeds[1, 2:], embeds[1])
    # Every row ends with its last real token, so generation appends in the same column for all rows.
    assert torch.equal(out.inputs_embeds[:, -1], embeds[:, -1])
    assert out.position_ids[2].tolist() == [0, 0, 0, 0, 1, 2, 3]


def test_text_only_batch_is_unchanged():
    embeds, labels = _inputs()
    mask = torch.ones(3, 5, dtype=torch.long)
    out = splice_visual_tokens(embeds, mask, None, torch.zeros(3, dtype=torch.bool), labels)
    assert torch.equal(out.inputs_embeds, embeds) and torch.equal(out.labels, labels)
