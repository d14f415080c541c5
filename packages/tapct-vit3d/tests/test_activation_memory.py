"""Activation memory kept for backward: fake-mode count == a real run; the paper budget."""

from __future__ import annotations

import pytest
import torch
from tapct_vit3d import activation_bytes_per_sample, create_model, saved_tensor_bytes


def test_fake_mode_count_equals_a_real_run() -> None:
    torch.manual_seed(0)
    model = create_model("tap_nano_3d", drop_path_rate=0.2).train()
    crops = [(2, (12, 32, 32)), (4, (12, 16, 16))]
    fake = activation_bytes_per_sample(model, crops, batch_sizes=(5, 10))
    real = []
    for b in (5, 10):
        xs = [torch.randn(n * b, 1, *size) for n, size in crops]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, n_bytes = saved_tensor_bytes(model.forward_features_list, xs, [None, None])
        real.append(n_bytes)
    # equal up to small bookkeeping tensors (the fake run passes all-False masks)
    assert fake == pytest.approx((real[1] - real[0]) / 5, rel=0.01)
    model.set_grad_checkpointing(True)
    assert activation_bytes_per_sample(model, crops, batch_sizes=(5, 10)) < fake / 3
    with pytest.raises(ValueError, match="batch_sizes"):
        activation_bytes_per_sample(model, crops, batch_sizes=(4, 4))


@pytest.mark.slow
def test_tap_b_3d_paper_crops_fit_the_budget() -> None:
    """Issue 10: <= 2.0 GiB per sample, <= 0.4 GiB with checkpointing (bf16, dp 0.2)."""
    model = create_model("tap_b_3d", drop_path_rate=0.2)
    crops = [(2, (12, 224, 224)), (8, (12, 96, 96))]
    plain = activation_bytes_per_sample(model, crops, mask_ratio=0.15)
    model.set_grad_checkpointing(True)
    checkpointed = activation_bytes_per_sample(model, crops, mask_ratio=0.15)
    assert plain <= 2.0 * 2**30
    assert checkpointed <= 0.4 * 2**30
