"""get_params_groups: membership and multipliers, bare and wrapped (DDP, compile, FSDP)."""

from __future__ import annotations

import pytest
import torch
from tapct_ssl import DINOv2Objective, DINOv2ObjectiveConfig, get_params_groups
from torch import nn
from torch.nn.parallel import DistributedDataParallel

SMALL_HEADS = DINOv2ObjectiveConfig(
    dino_head_n_prototypes=16,
    dino_head_hidden_dim=8,
    dino_head_bottleneck_dim=4,
    ibot_head_n_prototypes=16,
    ibot_head_hidden_dim=8,
    ibot_head_bottleneck_dim=4,
)


def _by_name(groups: list[dict]) -> dict[str, tuple[float, float, bool]]:
    table = {}
    for g in groups:
        assert len(g["params"]) == len(g["param_names"])
        for name in g["param_names"]:
            assert name not in table
            table[name] = (g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"])
    return table


def _check_objective_table(table: dict[str, tuple[float, float, bool]]) -> None:
    d = 0.9  # layerwise decay; the tiny backbone has L = 2 blocks
    sb = "student.backbone."
    assert table[sb + "patch_embed.proj.weight"] == pytest.approx((d**3 * 0.2, 1.0, False))
    assert table[sb + "patch_embed.proj.bias"] == pytest.approx((d**3 * 0.2, 0.0, False))
    for token in ("cls_token", "register_tokens", "mask_token", "pos_embed"):
        assert table[sb + token] == pytest.approx((d**3, 0.0, False)), token
    assert table[sb + "blocks.0.attn.qkv.weight"] == pytest.approx((d**2, 1.0, False))
    assert table[sb + "blocks.0.attn.qkv.bias"] == pytest.approx((d**2, 0.0, False))
    assert table[sb + "blocks.0.norm1.weight"] == pytest.approx((d**2, 0.0, False))
    assert table[sb + "blocks.0.ls1.gamma"] == pytest.approx((d**2, 0.0, False))
    assert table[sb + "blocks.1.mlp.fc2.weight"] == pytest.approx((d, 1.0, False))
    assert table[sb + "norm.weight"] == pytest.approx((1.0, 0.0, False))
    assert table["student.dino_head.mlp.0.weight"] == pytest.approx((1.0, 1.0, False))
    assert table["student.ibot_head.mlp.4.bias"] == pytest.approx((1.0, 0.0, False))
    last = "student.dino_head.last_layer.parametrizations.weight.original1"
    assert table[last] == pytest.approx((1.0, 1.0, True))
    assert not any(name.startswith("teacher.") for name in table)  # frozen teacher skipped


def test_objective_groups(tiny_backbone) -> None:
    objective = DINOv2Objective(tiny_backbone(), SMALL_HEADS)
    groups = get_params_groups(objective)
    table = _by_name(groups)
    _check_objective_table(table)
    n_trainable = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    assert sum(p.numel() for g in groups for p in g["params"]) == n_trainable
    # usable as AdamW groups, with the app's per-step rule
    opt = torch.optim.AdamW(groups)
    for g in opt.param_groups:
        g["lr"] = 1e-3 * g["lr_multiplier"] * (0.0 if g["is_last_layer"] else 1.0)
        g["weight_decay"] = 0.04 * g["wd_multiplier"]


def _same_groups(a: list[dict], b: list[dict]) -> None:
    assert _by_name(a) == _by_name(b)
    for ga, gb in zip(a, b):
        assert all(pa is pb for pa, pb in zip(ga["params"], gb["params"]))


def test_compile_and_fsdp_prefixes(tiny_backbone) -> None:
    objective = DINOv2Objective(tiny_backbone(), SMALL_HEADS)
    bare = get_params_groups(objective)
    compiled = torch.compile(objective)  # lazy: wraps as _orig_mod without compiling
    assert any(n.startswith("_orig_mod.") for n, _ in compiled.named_parameters())
    _same_groups(bare, get_params_groups(compiled))

    class FSDPLike(nn.Module):  # FSDP(use_orig_params=True) naming
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._fsdp_wrapped_module = inner

    _same_groups(bare, get_params_groups(FSDPLike(FSDPLike(objective))))


def test_ddp_prefix(tiny_backbone, gloo_group: None) -> None:
    objective = DINOv2Objective(tiny_backbone(), SMALL_HEADS)
    ddp = DistributedDataParallel(objective)
    assert all(n.startswith("module.") for n, _ in ddp.named_parameters())
    _same_groups(get_params_groups(objective), get_params_groups(ddp))


def test_backbone_alone_and_validation(tiny_backbone) -> None:
    table = _by_name(get_params_groups(tiny_backbone(), layerwise_decay=0.5))
    assert table["cls_token"] == pytest.approx((0.125, 0.0, False))
    assert table["blocks.1.attn.proj.weight"] == pytest.approx((0.5, 1.0, False))
    no_blocks = _by_name(get_params_groups(nn.Linear(2, 2)))
    assert no_blocks == {"weight": (1.0, 1.0, False), "bias": (1.0, 0.0, False)}
    with pytest.raises(ValueError, match="layerwise_decay"):
        get_params_groups(nn.Linear(2, 2), layerwise_decay=0.0)


def test_wrapper_names_are_stripped_but_real_module_names_kept() -> None:
    from tapct_ssl._names import strip_wrapper_prefixes

    assert strip_wrapper_prefixes("module._orig_mod.blocks.0.w") == "blocks.0.w"
    assert strip_wrapper_prefixes("_orig_mod.module.blocks.0.w") == "blocks.0.w"
    nested = "_fsdp_wrapped_module.a._fsdp_wrapped_module.b._checkpoint_wrapped_module.w"
    assert strip_wrapper_prefixes(nested) == "a.b.w"
    assert strip_wrapper_prefixes("head.module.weight") == "head.module.weight"
