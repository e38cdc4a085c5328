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
