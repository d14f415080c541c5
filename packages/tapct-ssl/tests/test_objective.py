"""DINOv2Objective: organisation, parity of its terms, one step, accumulation, DDP."""

from __future__ import annotations

import copy

import attrs
import pytest
import torch
from lightly.loss import DINOLoss as LightlyDINOLoss
from tapct_ssl import (
    LOSS_KEYS,
    DINOv2Objective,
    DINOv2ObjectiveConfig,
    DINOv2Terms,
    ibot_mask_indices,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel

K = 32
SMALL = DINOv2ObjectiveConfig(
    dino_head_n_prototypes=K,
    dino_head_hidden_dim=24,
    dino_head_bottleneck_dim=8,
    ibot_head_n_prototypes=K + 8,
    ibot_head_hidden_dim=24,
    ibot_head_bottleneck_dim=8,
)


def test_config_defaults_are_the_papers() -> None:
    cfg = DINOv2ObjectiveConfig()
    assert (cfg.dino_loss_weight, cfg.ibot_loss_weight, cfg.koleo_loss_weight) == (1.0, 1.0, 0.1)
    assert cfg.dino_head_n_prototypes == cfg.ibot_head_n_prototypes == 65536
    assert (cfg.dino_head_hidden_dim, cfg.dino_head_bottleneck_dim, cfg.dino_head_nlayers) == (
        2048,
        256,
        3,
    )
    assert cfg.centering == "centering" and cfg.n_global_crops == 2
    assert (cfg.student_temp, cfg.center_momentum) == (0.1, 0.9)
    assert cfg.dino_head_mlp_bias and cfg.ibot_head_mlp_bias  # DINOv2's heads have biases
    with pytest.raises(ValueError, match="centering"):
        DINOv2ObjectiveConfig(centering="sk")
    with pytest.raises(ValueError, match="koleo_loss_weight"):
        DINOv2ObjectiveConfig(koleo_loss_weight=-1.0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.centering = "sinkhorn_knopp"  # type: ignore[misc]


def test_heads_without_mlp_biases(tiny_backbone) -> None:
    """``*_head_mlp_bias=False`` drops the MLP biases: a zero input gives zero logits."""
    cfg = attrs.evolve(SMALL, dino_head_mlp_bias=False, ibot_head_mlp_bias=False)
    objective = DINOv2Objective(tiny_backbone(), cfg)
    for name in ("dino_head", "ibot_head"):
        head = objective.student[name]
        assert not any(n.endswith("bias") for n, _ in head.named_parameters())
        assert torch.count_nonzero(head(torch.zeros(3, objective.embed_dim))) == 0
    with pytest.raises(ValueError, match="dino_head_mlp_bias must be true or false"):
        DINOv2ObjectiveConfig(dino_head_mlp_bias="no")  # type: ignore[arg-type]
    with_bias = DINOv2Objective(tiny_backbone(), SMALL).student["dino_head"]
    assert sum(n.endswith("bias") for n, _ in with_bias.named_parameters()) == 3


def test_structure(tiny_backbone) -> None:
    backbone = tiny_backbone()
    objective = DINOv2Objective(backbone, SMALL)
    assert (
        set(objective.student)
        == set(objective.teacher)
        == {
            "backbone",
            "dino_head",
            "ibot_head",
        }
    )
    assert objective.student["backbone"] is backbone
    assert objective.teacher["backbone"] is not backbone
    assert objective.student["dino_head"] is not objective.student["ibot_head"]  # untied
    assert objective.student["ibot_head"].out_dim == K + 8
    assert not any(p.requires_grad for p in objective.teacher.parameters())
    objective.train()
    assert objective.student.training and not objective.teacher.training
    for a, b in zip(objective.student.parameters(), objective.teacher.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="embed_dim"):
        DINOv2Objective(nn.Linear(2, 2), SMALL)


def _capture(module: nn.Module, store: list[torch.Tensor]):
    return module.register_forward_hook(lambda m, i, o: store.append(o.detach()))


def test_terms_match_lightly_and_the_ibot_formula(tiny_backbone, batch_tools) -> None:
    """End to end: the DINO terms equal lightly's multi-crop DINO loss on the head outputs."""
    collate, make_crops = batch_tools
    objective = DINOv2Objective(tiny_backbone(), SMALL)
    torch.manual_seed(1)
    objective.dino_loss.center.normal_(0.0, 0.1)
    objective.ibot_patch_loss.center.normal_(0.0, 0.1)
    n_images = 3
    g, locs, m = make_crops(n_images, n_local=8)
    batch = collate(g, locs, m)
    t_cls, s_cls, t_patch, s_patch = [], [], [], []
    hooks = [
        _capture(objective.teacher["dino_head"], t_cls),
        _capture(objective.student["dino_head"], s_cls),
        _capture(objective.teacher["ibot_head"], t_patch),
        _capture(objective.student["ibot_head"], s_patch),
    ]
    out = objective(*batch, teacher_temp=0.05)
    for h in hooks:
        h.remove()
    assert [name for name, _ in out] == list(LOSS_KEYS) == list(DINOv2Terms.names())

    teacher_views = list(t_cls[0].chunk(2))  # crop order
    student_views = list(s_cls[0].chunk(10))  # 2 global then 8 local
    lightly_loss = LightlyDINOLoss(output_dim=K, student_temp=0.1, center_momentum=0.9)
    lightly_loss.center.copy_(objective.dino_loss.center.view(1, 1, K))
    expected = lightly_loss(teacher_views, student_views, teacher_temp=0.05)
    dino = out.dino_local_crops_loss + out.dino_global_crops_loss
    torch.testing.assert_close(dino, expected, rtol=1e-5, atol=1e-6)

    # iBOT by hand on the captured masked-token logits
    masks = batch.masks
    center = objective.ibot_patch_loss.center
    targets = torch.softmax((t_patch[0] - center) / 0.05, dim=-1)
    ce = -(targets * torch.log_softmax(s_patch[0] / 0.1, dim=-1)).sum(-1)
    weights = 1.0 / masks.sum(-1, keepdim=True).clamp(min=1).expand_as(masks)[masks]
    expected_ibot = (ce * weights).sum() / masks.shape[0]
    torch.testing.assert_close(out.ibot_loss, expected_ibot, rtol=1e-5, atol=1e-6)

    total = dino + out.ibot_loss + 0.1 * out.koleo_loss
    torch.testing.assert_close(out.loss.detach(), total)


def _slice(crops: list[torch.Tensor], i: int) -> list[torch.Tensor]:
    return [c[i : i + 1] for c in crops]


def test_gradient_accumulation_equals_one_batch(tiny_backbone, batch_tools) -> None:
    """4 micro-batches of 1 (loss / 4) == one batch of 4: grads, params, teacher, centers.

    KoLeo is a per-batch nearest-neighbour statistic (undefined for a batch of 1), so its
    weight is 0 here; DINO and iBOT are per-image means and must accumulate exactly.
    """
    collate, make_crops = batch_tools
    cfg = attrs.evolve(SMALL, koleo_loss_weight=0.0)
    big = DINOv2Objective(tiny_backbone(), cfg).double()
    small = copy.deepcopy(big)
    opt_big = torch.optim.SGD([p for p in big.parameters() if p.requires_grad], lr=0.1)
    opt_small = torch.optim.SGD([p for p in small.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        g, locs, m = make_crops(4, n_local=8, seed=10 + step, dtype=torch.float64)
        big(*collate(g, locs, m), teacher_temp=0.04).loss.backward()
        for i in range(4):
            micro = collate(_slice(g, i), _slice(locs, i), _slice(m, i))
            (small(*micro, teacher_temp=0.04).loss / 4).backward()
        for (name, pb), ps in zip(big.student.named_parameters(), small.student.parameters()):
            torch.testing.assert_close(ps.grad, pb.grad, rtol=1e-9, atol=1e-12, msg=name)
        for obj, opt in ((big, opt_big), (small, opt_small)):
            opt.step()
            opt.zero_grad()
            obj.update(momentum=0.8)
        for a, b in zip(big.state_dict().values(), small.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(small.dino_loss.center, big.dino_loss.center)
        torch.testing.assert_close(small.ibot_patch_loss.center, big.ibot_patch_loss.center)
    assert big.dino_loss.center.abs().sum() > 0 and big.ibot_patch_loss.center.abs().sum() > 0


def test_no_masked_patch_keeps_every_parameter_in_the_graph(tiny_backbone, batch_tools) -> None:
    collate, make_crops = batch_tools
    objective = DINOv2Objective(tiny_backbone(), SMALL)
    g, locs, m = make_crops(2, n_local=2)
    batch = collate(g, locs, [torch.zeros_like(x) for x in m])
    out = objective(*batch, teacher_temp=0.04)
    assert out.ibot_loss.item() == 0.0
    out.loss.backward()
    missing = [n for n, p in objective.student.named_parameters() if p.grad is None]
    assert missing == []
    objective.update(0.99)  # iBOT center: no masked token anywhere -> unchanged
    assert objective.ibot_patch_loss.center.abs().sum() == 0


def test_ddp_wrapped_objective(tiny_backbone, batch_tools, gloo_group: None) -> None:
    collate, make_crops = batch_tools
    objective = DINOv2Objective(tiny_backbone(), SMALL)
    reference = copy.deepcopy(objective)
    ddp = DistributedDataParallel(objective)  # find_unused_parameters=False
    g, locs, m = make_crops(2, n_local=8)
    batch = collate(g, locs, m)
    out = ddp(*batch, teacher_temp=0.04)
    out.loss.backward()
    expected = reference(*batch, teacher_temp=0.04)
    expected.loss.backward()
    torch.testing.assert_close(out.loss, expected.loss)
    for (name, p), q in zip(objective.student.named_parameters(), reference.student.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    ddp.module.update(0.9)  # centers all-reduced over the 1-process group
    reference.update(0.9)
    torch.testing.assert_close(objective.dino_loss.center, reference.dino_loss.center)
    # a step without any masked patch must not break DDP either
    batch = collate(g, locs, [torch.zeros_like(x) for x in m])
    ddp(*batch, teacher_temp=0.04).loss.backward()


def test_sinkhorn_mode_and_bf16_autocast(tiny_backbone, batch_tools) -> None:
    collate, make_crops = batch_tools
    objective = DINOv2Objective(tiny_backbone(), attrs.evolve(SMALL, centering="sinkhorn_knopp"))
    batch = collate(*make_crops(3, n_local=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(*batch, teacher_temp=0.04)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for _, v in out)
    out.loss.backward()
    objective.update(0.99)
    assert objective.dino_loss.center.abs().sum() == 0  # SK mode never moves the centers


def test_backbone_without_forward_features_list(tiny_backbone, batch_tools) -> None:
    collate, make_crops = batch_tools

    class NoList(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.embed_dim = inner.embed_dim

        def forward_features(self, x, masks=None):
            return self.inner.forward_features(x, masks)

    with_list = DINOv2Objective(tiny_backbone(), SMALL)
    without = copy.deepcopy(with_list)
    without.student["backbone"] = NoList(without.student["backbone"])
    without.teacher["backbone"] = NoList(without.teacher["backbone"])
    batch = collate(*make_crops(2, n_local=3))
    a, b = with_list(*batch, 0.04), without(*batch, 0.04)
    for (name, x), (_, y) in zip(a, b):
        torch.testing.assert_close(x, y, msg=name)


def test_input_validation_and_mask_index(tiny_backbone, batch_tools) -> None:
    collate, make_crops = batch_tools
    objective = DINOv2Objective(tiny_backbone(), SMALL)
    g, loc, m = collate(*make_crops(2, n_local=2))
    with pytest.raises(ValueError, match="teacher_temp"):
        objective(g, loc, m, teacher_temp=0.0)
    with pytest.raises(ValueError, match="masks must be bool"):
        objective(g, loc, m.float(), 0.04)
    with pytest.raises(ValueError, match="global_crops has 3 crops"):
        objective(g[:3], loc, m[:3], 0.04)
    with pytest.raises(ValueError, match="mask_index is for 2 images"):
        objective(g, loc, m, 0.04, mask_index=ibot_mask_indices(m[:2]))
    derived = objective(g, loc, m, 0.04)  # indices and weights derived from the masks
    given = objective(g, loc, m, 0.04, mask_index=ibot_mask_indices(m))  # from a worker
    for (name, a), (_, b) in zip(derived, given):
        torch.testing.assert_close(a, b, msg=name)


def test_terms_record_is_frozen_and_iterable(tiny_backbone, batch_tools) -> None:
    collate, make_crops = batch_tools
    objective = DINOv2Objective(tiny_backbone(), SMALL)
    out = objective(*collate(*make_crops(2, n_local=2)), 0.04)
    assert isinstance(out, DINOv2Terms) and out.loss.requires_grad
    assert list(out.as_dict()) == list(DINOv2Terms.names())
    assert dict(out.items()).keys() == out.as_dict().keys()
    assert not any(v.requires_grad for _, v in out.detached())
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        out.loss = out.koleo_loss  # type: ignore[misc]


def test_accessors_checkpoint_state_and_clipping(tiny_backbone, batch_tools) -> None:
    collate, make_crops = batch_tools
    objective = DINOv2Objective(tiny_backbone(), SMALL)
    assert objective.student_backbone is objective.student["backbone"]
    assert objective.teacher_backbone is objective.teacher["backbone"]
    objective(*collate(*make_crops(2, n_local=2)), 0.04).loss.backward()
    grads = {n: p.grad.clone() for n, p in objective.student.named_parameters()}
    norms = {
        k: torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in part.parameters()])
        )
        for k, part in objective.student.items()
    }
    limit = 0.5 * float(min(norms.values()))
    norm = objective.clip_gradients(limit)
    assert isinstance(norm, torch.Tensor) and norm.ndim == 0  # stays on the device
    torch.testing.assert_close(norm, max(norms.values()))
    for part in objective.student.values():  # each part clipped to the limit separately
        clipped = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(p.grad) for p in part.parameters()])
        )
        torch.testing.assert_close(clipped, torch.tensor(limit), rtol=1e-4, atol=0)
    assert any(not torch.equal(grads[n], p.grad) for n, p in objective.student.named_parameters())

    objective.update(0.5)
    state = objective.state_for_checkpoint()
    assert set(state) == {"student", "teacher", "objective_state"}
    assert "dino_loss.center" in state["objective_state"]
    assert all(k.startswith(("backbone.", "dino_head.", "ibot_head.")) for k in state["teacher"])
    other = DINOv2Objective(tiny_backbone(seed=5), SMALL)
    other.load_checkpoint_state(state)
    for (name, a), b in zip(objective.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(RuntimeError, match="Missing"):
        other.load_checkpoint_state({**state, "objective_state": {}})
