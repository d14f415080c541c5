"""DINOHead: architecture, output formula, init, DINOv2 checkpoint names."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tapct_ssl import DINOHead
from torch import nn


def test_architecture_defaults_are_the_papers() -> None:
    head = DINOHead(384)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (384, 2048),
        (2048, 2048),
        (2048, 256),
    ]
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == 2
    assert head.last_layer.weight.shape == (65536, 256)
    assert head.last_layer.bias is None


def test_output_is_normalised_bottleneck_times_normalised_prototypes() -> None:
    torch.manual_seed(0)
    head = DINOHead(8, out_dim=10, hidden_dim=12, bottleneck_dim=6).double()
    x = torch.randn(4, 8, dtype=torch.float64)
    z = head.mlp(x)
    z = z / z.norm(dim=-1, keepdim=True)
    v = head.last_layer.parametrizations.weight.original1
    g = head.last_layer.parametrizations.weight.original0
    expected = z @ (g * v / v.norm(dim=1, keepdim=True)).t()
    torch.testing.assert_close(head(x), expected)
    torch.testing.assert_close(g, torch.ones(10, 1, dtype=torch.float64))  # g starts at 1
    # rows of the effective prototype matrix have unit norm at init
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(10).double())


def test_init_truncated_normal_and_zero_bias() -> None:
    torch.manual_seed(1)
    head = DINOHead(64, out_dim=16, hidden_dim=256, bottleneck_dim=32)
    first = head.mlp[0]
    assert first.weight.std().item() == pytest.approx(0.02, rel=0.1)
    # DINOv2 (timm's trunc_normal_) truncates at +-2 absolute, i.e. 100 std: no clipping
    assert first.weight.abs().max().item() > 0.04
    assert torch.count_nonzero(first.bias) == 0


def test_one_layer_head_and_deepcopy() -> None:
    head = DINOHead(8, out_dim=5, bottleneck_dim=4, nlayers=1)
    assert len(head.mlp) == 1 and head.mlp[0].out_features == 4
    clone = copy.deepcopy(head)
    x = torch.randn(2, 8)
    torch.testing.assert_close(clone(x), head(x))


def test_loads_dinov2_weight_g_weight_v_names() -> None:
    head = DINOHead(8, out_dim=5, hidden_dim=6, bottleneck_dim=4)
    sd = head.state_dict()
    legacy = {k: v for k, v in sd.items() if "parametrizations" not in k}
    legacy["last_layer.weight_g"] = torch.full((5, 1), 2.0)
    legacy["last_layer.weight_v"] = torch.randn(5, 4)
    other = DINOHead(8, out_dim=5, hidden_dim=6, bottleneck_dim=4)
    other.load_state_dict(legacy, strict=True)
    v = legacy["last_layer.weight_v"]
    torch.testing.assert_close(other.last_layer.weight, 2.0 * F.normalize(v, dim=1))


def test_validation() -> None:
    with pytest.raises(ValueError, match="out_dim"):
        DINOHead(8, out_dim=0)
    with pytest.raises(TypeError, match="in_dim"):
        DINOHead(8.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last axis 8"):
        DINOHead(8, out_dim=4, hidden_dim=4, bottleneck_dim=4)(torch.zeros(2, 7))
