"""Collapse monitors: known answers for each statistic, and the warnings' thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tapct_ssl import (
    DINOv2Objective,
    DINOv2ObjectiveConfig,
    collapse_stats,
    collapse_warnings,
    effective_rank,
)
from tapct_ssl.collapse import batch_mean_entropy, cls_embedding_std, mean_entropy


def test_entropy_known_values():
    k = 64
    uniform = torch.full((5, k), 1.0 / k)
    one_hot = torch.nn.functional.one_hot(torch.arange(5), k).float()
    assert mean_entropy(uniform).item() == pytest.approx(math.log(k), rel=1e-6)
    assert mean_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    # Five different one-hots: the batch mean is uniform over 5 prototypes.
    assert batch_mean_entropy(one_hot).item() == pytest.approx(math.log(5), rel=1e-6)
    same = torch.nn.functional.one_hot(torch.zeros(5, dtype=torch.long), k).float()
    assert batch_mean_entropy(same).item() == pytest.approx(0.0, abs=1e-6)


def test_cls_std_healthy_and_collapsed():
    g = torch.Generator().manual_seed(0)
    e = 256
    spread = torch.randn(4096, e, generator=g)
    # Uniform on the unit sphere: each coordinate has std 1/sqrt(E).
    assert cls_embedding_std(spread).item() == pytest.approx(1 / math.sqrt(e), rel=0.02)
    same = torch.randn(1, e, generator=g).expand(32, e) + 1e-7 * torch.randn(32, e, generator=g)
    assert cls_embedding_std(same).item() < 1e-5
    with pytest.raises(ValueError, match="B >= 2"):
        cls_embedding_std(torch.randn(1, e))


def test_effective_rank_against_numpy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 20, generator=g) * torch.linspace(0.1, 3, 20)
    sigma = np.linalg.svd(x.double().numpy(), compute_uv=False)
    q = sigma / sigma.sum()
    expected = math.exp(-(q * np.log(q)).sum())
    assert effective_rank(x).item() == pytest.approx(expected, rel=1e-5)
    assert effective_rank(torch.eye(8)).item() == pytest.approx(8.0, rel=1e-5)
    rank_one = torch.randn(10, 1, generator=g) @ torch.randn(1, 16, generator=g)
    assert effective_rank(rank_one).item() == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.zeros(4, 4)).item() == 1.0


def test_collapse_stats_uses_plain_softmax_for_the_batch_mean():
    # Sinkhorn-Knopp targets have a uniform batch marginal whatever the logits: the
    # batch-mean entropy must come from the logits, where one winning prototype shows.
    k, b = 16, 8
    logits = torch.zeros(b, k)
    logits[:, 3] = 10.0  # every sample picks prototype 3
    sk_like = torch.full((b, k), 1.0 / k)
    cls = torch.randn(b, 32)
    stats = collapse_stats(sk_like, logits, 0.04, cls)
    assert stats.teacher_batch_entropy.item() < 1e-3
    assert stats.teacher_entropy.item() == pytest.approx(math.log(k), rel=1e-6)
    assert [name for name, _ in stats] == ["teacher_entropy", "teacher_batch_entropy", "cls_std"]
    assert math.isnan(collapse_stats(sk_like[:1], logits[:1], 0.04, cls[:1]).cls_std.item())


def test_warnings_thresholds():
    k, e, b = 1024, 64, 32
    healthy = {
        "teacher_entropy": 0.5 * math.log(k),
        "teacher_batch_entropy": 0.8 * math.log(b),
        "cls_std": 1 / math.sqrt(e),
        "cls_effective_rank": 20.0,
    }
    assert collapse_warnings(healthy, k, e, b) == []
    uniform = collapse_warnings({**healthy, "teacher_entropy": math.log(k)}, k, e, b)
    assert len(uniform) == 1 and "near uniform" in uniform[0] and "warm-up" in uniform[0]
    # Uniform targets: a lower teacher temperature first (what ended it in issue 12);
    # one prototype for everything: not that (a lower temperature sharpens further).
    assert "lower teacher temperature (optim.warmup_teacher_temp" in uniform[0]
    (one,) = collapse_warnings({**healthy, "teacher_batch_entropy": 0.0}, k, e, b)
    assert "same teacher prototype" in one and "teacher temperature" not in one
    assert len(collapse_warnings({**healthy, "cls_std": 1e-4}, k, e, b)) == 1
    assert len(collapse_warnings({**healthy, "cls_effective_rank": 1.01}, k, e, b)) == 1
    # A run already on Sinkhorn-Knopp is not told to switch to it.
    (sk,) = collapse_warnings({**healthy, "teacher_entropy": math.log(k)}, k, e, b,
                              centering="sinkhorn_knopp")  # fmt: skip
    assert "sinkhorn_knopp" not in sk and "warm-up" in sk
    # Missing and non-finite values are ignored.
    assert collapse_warnings({"cls_std": math.nan}, k, e, b) == []


class _TinyBackbone(torch.nn.Module):
    def __init__(self, e: int = 16) -> None:
        super().__init__()
        self.embed_dim = e
        self.proj = torch.nn.Linear(8, e)
        self.mask_token = torch.nn.Parameter(torch.zeros(e))

    def forward_features(self, x, masks=None):
        tokens = self.proj(x.flatten(2).transpose(1, 2))  # (B, N, E)
        if masks is not None:
            tokens = torch.where(masks[..., None], self.mask_token.to(tokens.dtype), tokens)
        return {"x_norm_clstoken": tokens.mean(1), "x_norm_patchtokens": tokens}


@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_objective_record_carries_the_monitors(centering):
    torch.manual_seed(0)
    cfg = DINOv2ObjectiveConfig(
        centering=centering,
        dino_head_n_prototypes=32, dino_head_hidden_dim=16, dino_head_bottleneck_dim=8,
        ibot_head_n_prototypes=32, ibot_head_hidden_dim=16, ibot_head_bottleneck_dim=8,
    )  # fmt: skip
    objective = DINOv2Objective(_TinyBackbone(), cfg)
    global_crops = torch.randn(2 * 3, 8, 4)  # (n_g B, C=8, N=4 tokens)
    masks = torch.zeros(6, 4, dtype=torch.bool)
    masks[:, 0] = True
    terms = objective(global_crops, None, masks, teacher_temp=0.04)
    assert terms.monitors is not None and terms.teacher_cls is not None
    assert terms.teacher_cls.shape == (6, 16)
    values = dict(terms.monitors)
    assert 0.0 <= values["teacher_entropy"].item() <= math.log(32) + 1e-5
    assert 0.0 <= values["teacher_batch_entropy"].item() <= math.log(32) + 1e-5
    assert values["cls_std"].item() > 0
    # The monitors are not loss terms: iterating the record yields the losses only.
    assert "teacher_entropy" not in dict(terms)
    assert terms.detached().monitors is terms.monitors
