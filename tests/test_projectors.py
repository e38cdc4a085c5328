"""Projectors and arch specifiers: the released dual projector's structure, key names and stream order."""

import pytest
import torch

from prismatic.models.backbones.vision.base_vision import StreamSpec
from prismatic.models.projectors import (
    ArchSpecifier,
    DualProjector,
    IndependentDualProjector,
    build_projector,
    strip_compiled_prefix,
)

VIT = StreamSpec("vit", 12, 5)
SVD = StreamSpec("svd", 16, 7)


def test_arch_specifier_parses_and_round_trips():
    arch = ArchSpecifier.parse("no-align+dual")
    assert (arch.align, arch.projector) == (False, "dual")
    assert str(ArchSpecifier.parse("align+fused-gelu-mlp")) == "align+fused-gelu-mlp"


@pytest.mark.parametrize("bad", ["dual", "no-align+dual2", "noalign+dual", "align+", ""])
def test_unknown_arch_specifier_lists_valid_forms(bad):
    with pytest.raises(ValueError, match=r"valid forms are: .*no-align\+dual"):
        ArchSpecifier.parse(bad)


def test_dual_projector_matches_released_structure():
    d = 8
    proj = build_projector(ArchSpecifier.parse("no-align+dual"), (VIT, SVD), d)
    assert isinstance(proj, DualProjector)
    shapes = {k: tuple(v.shape) for k, v in proj.state_dict().items()}
    assert shapes == {
        "projector_base.0.weight": (48, 12), "projector_base.0.bias": (48,),
        "projector_base.2.weight": (d, 48), "projector_base.2.bias": (d,),
        "svd_projector_base.0.weight": (64, 16), "svd_projector_base.0.bias": (64,),
        "svd_projector_base.2.weight": (d, 64), "svd_projector_base.2.bias": (d,),
        "final_projection.weight": (d, d), "final_projection.bias": (d,),
    }  # fmt: skip
    feats = {"vit": torch.randn(2, 5, 12), "svd": torch.randn(2, 7, 16)}
    out = proj(feats)
    assert out.shape == (2, 12, d)
    # Literal computation: per-stream Linear-GELU-Linear-GELU, concat static first, one shared Linear.
    gelu = torch.nn.functional.gelu

    def base(m, x):
        return gelu(m[2](gelu(m[0](x))))

    expected = proj.final_projection(torch.cat([base(proj.projector_base, feats["vit"]),
                                                base(proj.svd_projector_base, feats["svd"])], dim=1))  # fmt: skip
    torch.testing.assert_close(out, expected)


def test_released_orig_mod_keys_load_after_stripping():
    proj = build_projector(ArchSpecifier.parse("no-align+dual"), (VIT, SVD), 8)
    released = {f"_orig_mod.{k}": torch.randn_like(v) for k, v in proj.state_dict().items()}
    proj.load_state_dict(strip_compiled_prefix(released), strict=True)
    torch.testing.assert_close(proj.final_projection.weight, released["_orig_mod.final_projection.weight"])


def test_single_stream_projectors_and_independent_dual():
    x = {"vit": torch.randn(3, 5, 12)}
    for kind, n_linear in [("linear", 1), ("gelu-mlp", 2), ("fused-gelu-mlp", 3)]:
        proj = build_projector(ArchSpecifier.parse(f"align+{kind}"), (VIT,), 8)
        assert proj(x).shape == (3, 5, 8)
        assert sum(isinstance(m, torch.nn.Linear) for m in proj.modules()) == n_linear
    ind = build_projector(ArchSpecifier.parse("no-align+dual-independent"), (VIT, SVD), 8)
    assert isinstance(ind, IndependentDualProjector)
    assert ind({"vit": torch.randn(2, 5, 12), "svd": torch.randn(2, 7, 16)}).shape == (2, 12, 8)


def test_projector_stream_count_mismatch_says_what_to_use():
    with pytest.raises(ValueError, match="needs a dual-stream vision backbone"):
        build_projector(ArchSpecifier.parse("no-align+dual"), (VIT,), 8)
    with pytest.raises(ValueError, match="use 'dual' or 'dual-independent'"):
        build_projector(ArchSpecifier.parse("no-align+fused-gelu-mlp"), (VIT, SVD), 8)


def test_feature_norm_adds_one_layernorm_per_stream_and_nothing_when_off():
    off = build_projector(ArchSpecifier.parse("no-align+dual"), (VIT, SVD), 8)
    on = build_projector(ArchSpecifier.parse("no-align+dual"), (VIT, SVD), 8, feature_norm=True)
    norm_keys = {"projector_norm.weight", "projector_norm.bias", "svd_projector_norm.weight", "svd_projector_norm.bias"}
    assert set(on.state_dict()) == set(off.state_dict()) | norm_keys  # released key names untouched either way
    assert not any("norm" in k for k in off.state_dict())
    feats = {"vit": torch.randn(2, 5, 12), "svd": torch.randn(2, 7, 16)}
    ln = torch.nn.functional.layer_norm
    normed = {"vit": ln(feats["vit"], (12,)), "svd": ln(feats["svd"], (16,))}
    on.load_state_dict(off.state_dict(), strict=False)  # same MLP weights; fresh norms are the plain standardisation
    torch.testing.assert_close(on(feats), off(normed))
    # The point of it: a stream's scale no longer matters (as long as its variance is well above LayerNorm's eps).
    scaled = {"vit": 1e3 * feats["vit"], "svd": 0.1 * feats["svd"]}
    torch.testing.assert_close(on(scaled), on(feats), atol=1e-3, rtol=1e-3)


def test_feature_norm_in_single_stream_and_independent_projectors():
    for kind in ("linear", "fused-gelu-mlp"):
        proj = build_projector(ArchSpecifier.parse(f"no-align+{kind}"), (VIT,), 8, feature_norm=True)
        assert {"norm.weight", "norm.bias"} <= set(proj.state_dict())
        x = torch.randn(3, 5, 12)
        torch.testing.assert_close(proj({"vit": 50 * x}), proj({"vit": x}), atol=1e-4, rtol=1e-4)
    ind = build_projector(ArchSpecifier.parse("no-align+dual-independent"), (VIT, SVD), 8, feature_norm=True)
    assert {"norms.vit.weight", "norms.svd.weight"} <= set(ind.state_dict())
    plain = build_projector(ArchSpecifier.parse("no-align+dual-independent"), (VIT, SVD), 8)
    assert not any(k.startswith("norms.") for k in plain.state_dict())


def test_feature_norm_flag_reaches_the_model_from_its_config():
    """`--model.projector_feature_norm` is what pretrain.py and load() build from (old configs lack it: off)."""
    import draccus

    from prismatic.assembly import build_vlm
    from prismatic.conf.models import ModelConfig, get_model_config

    cfg = get_model_config("prism_siglip+tiny")
    assert cfg.projector_feature_norm is False
    cfg.projector_feature_norm = True
    vlm = build_vlm(cfg, llm_weights=False)
    assert vlm.projector_feature_norm and "projector.norm.weight" in vlm.state_dict()
    encoded = draccus.encode(cfg)
    del encoded["projector_feature_norm"]  # a config.json written before the option existed
    assert draccus.decode(ModelConfig, encoded).projector_feature_norm is False
