"""The framework's static SigLIP encoder (a truncated timm ViT) as transformers' `SiglipVisionModel`.

The framework takes the patch tokens of the second-to-last block, without the final norm; it builds the timm ViT and
drops its last block, final norm and attention-pool head (`timm_vit.drop_last_block`). The remaining blocks are exactly
what the features need, so the export is a SigLIP vision tower with `num_hidden_layers` = the remaining blocks, read at
`vision_feature_layer=-1`: transformers' hidden state -1 is the last encoder layer's output before `post_layernorm`,
i.e. the framework's features. `post_layernorm` (which SiglipVisionModel always has) is written as the identity
LayerNorm (weight 1, bias 0) and is never on the feature path; the head is off (`vision_use_head=False`).

Name mapping (timm -> transformers, per block i):

| timm                                   | transformers (under Llava's `model.vision_tower.`)    |
| `patch_embed.proj.{weight,bias}`       | `embeddings.patch_embedding.{weight,bias}`            |
| `pos_embed` [1, N, C]                  | `embeddings.position_embedding.weight` [N, C]         |
| `blocks.i.norm1` / `blocks.i.norm2`    | `encoder.layers.i.layer_norm1` / `layer_norm2`        |
| `blocks.i.attn.qkv` (q, k, v stacked)  | `encoder.layers.i.self_attn.{q,k,v}_proj`             |
| `blocks.i.attn.proj`                   | `encoder.layers.i.self_attn.out_proj`                 |
| `blocks.i.mlp.fc1` / `blocks.i.mlp.fc2`| `encoder.layers.i.mlp.fc1` / `fc2`                    |

Anything of a timm ViT that SiglipVisionModel cannot express (prefix tokens, a pre-norm, LayerScale, q/k norms, a
norm inside the MLP, another activation) is refused with an error rather than exported approximately.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer
from transformers import SiglipVisionConfig

from prismatic.models.backbones.vision.timm_vit import TimmViTBackbone

# torch activation -> the transformers `hidden_act` that computes the same function.
_GELU_ACTS: dict[str, str] = {"none": "gelu", "tanh": "gelu_pytorch_tanh"}


def _unsupported(what: str) -> ValueError:
    return ValueError(
        f"The static encoder has {what}, which transformers' SiglipVisionModel cannot represent, so it has no exact "
        "Llava export; export it with the hf-auto format (prismatic.hf.export_auto) instead."
    )


def _hidden_act(block: nn.Module) -> str:
    act = block.mlp.act
    if type(act) is not nn.GELU or act.approximate not in _GELU_ACTS:
        raise _unsupported(f"the MLP activation {act!r}")
    return _GELU_ACTS[act.approximate]


def _check_representable(model: VisionTransformer) -> None:
    """Refuse every timm ViT feature that SiglipVisionModel has no place for."""
    if model.num_prefix_tokens or model.cls_token is not None or model.reg_token is not None:
        raise _unsupported(f"{model.num_prefix_tokens} prefix token(s) (CLS / registers)")
    if not isinstance(model.norm_pre, nn.Identity):
        raise _unsupported("a pre-norm before the blocks")
    if not isinstance(model.patch_embed.norm, nn.Identity) or model.patch_embed.proj.bias is None:
        raise _unsupported("a patch-embedding norm or no patch-embedding bias")
    for index, block in enumerate(model.blocks):
        extras = [name for name in ("ls1", "ls2", "attn.q_norm", "attn.k_norm", "attn.norm", "mlp.norm")
                  if not isinstance(block.get_submodule(name), nn.Identity)]  # fmt: skip
        if extras or block.attn.qkv.bias is None:
            raise _unsupported(f"in block {index} {extras or 'no qkv bias'}")


def siglip_vision_config(backbone: TimmViTBackbone) -> SiglipVisionConfig:
    """The SiglipVisionConfig of the framework's (truncated) SigLIP encoder."""
    model = backbone.featurizer
    _check_representable(model)
    block = model.blocks[0]
    patch = model.patch_embed.patch_size
    if patch[0] != patch[1] or model.patch_embed.grid_size[0] != model.patch_embed.grid_size[1]:
        raise _unsupported(f"non-square patches or grid ({patch}, {model.patch_embed.grid_size})")
    return SiglipVisionConfig(
        hidden_size=model.embed_dim,
        intermediate_size=block.mlp.fc1.out_features,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=block.attn.num_heads,
        num_channels=model.patch_embed.proj.in_channels,
        image_size=backbone.spec.image_size,
        patch_size=patch[0],
        hidden_act=_hidden_act(block),
        layer_norm_eps=block.norm1.eps,
        attention_dropout=0.0,
        vision_use_head=False,
    )


def siglip_state_dict(backbone: TimmViTBackbone, prefix: str) -> dict[str, torch.Tensor]:
    """The encoder's weights under the SigLIP vision tower's names, each after `prefix`; see the module table."""
    model = backbone.featurizer
    _check_representable(model)
    out = prefix
    state = {
        f"{out}embeddings.patch_embedding.weight": model.patch_embed.proj.weight,
        f"{out}embeddings.patch_embedding.bias": model.patch_embed.proj.bias,
        f"{out}embeddings.position_embedding.weight": model.pos_embed[0],
        # Never on the feature path (see the module docstring): the identity keeps the tower's own output sane too.
        f"{out}post_layernorm.weight": torch.ones_like(model.blocks[0].norm1.weight),
        f"{out}post_layernorm.bias": torch.zeros_like(model.blocks[0].norm1.bias),
    }
    for index, block in enumerate(model.blocks):
        layer = f"{out}encoder.layers.{index}."
        q, k, v = block.attn.qkv.weight.chunk(3, dim=0)
        q_bias, k_bias, v_bias = block.attn.qkv.bias.chunk(3, dim=0)
        state |= {
            f"{layer}layer_norm1.weight": block.norm1.weight, f"{layer}layer_norm1.bias": block.norm1.bias,
            f"{layer}self_attn.q_proj.weight": q, f"{layer}self_attn.q_proj.bias": q_bias,
            f"{layer}self_attn.k_proj.weight": k, f"{layer}self_attn.k_proj.bias": k_bias,
            f"{layer}self_attn.v_proj.weight": v, f"{layer}self_attn.v_proj.bias": v_bias,
            f"{layer}self_attn.out_proj.weight": block.attn.proj.weight,
            f"{layer}self_attn.out_proj.bias": block.attn.proj.bias,
            f"{layer}layer_norm2.weight": block.norm2.weight, f"{layer}layer_norm2.bias": block.norm2.bias,
            f"{layer}mlp.fc1.weight": block.mlp.fc1.weight, f"{layer}mlp.fc1.bias": block.mlp.fc1.bias,
            f"{layer}mlp.fc2.weight": block.mlp.fc2.weight, f"{layer}mlp.fc2.bias": block.mlp.fc2.bias,
        }  # fmt: skip
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}
