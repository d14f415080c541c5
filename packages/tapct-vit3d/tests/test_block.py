"""Block speed/memory mechanics: dtype of the residual stream, subset drop path,
activation checkpointing with drop path, compiled blocks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tapct_vit3d import Block, create_model
from tapct_vit3d.block import LayerScale, drop_add_residual_stochastic_depth


def _reference_block(blk: Block, x: torch.Tensor) -> torch.Tensor:
    """The block written plainly (DINOv2's eval-mode formula)."""

    def attn(h: torch.Tensor) -> torch.Tensor:
        b, n, e = h.shape
        heads = blk.attn.num_heads
        qkv = blk.attn.qkv(h).reshape(b, n, 3, heads, e // heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return blk.attn.proj(y.transpose(1, 2).reshape(b, n, e))

    x = x + blk.ls1.gamma * attn(blk.norm1(x))
    return x + blk.ls2.gamma * blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(blk.norm2(x))))


def test_block_equals_the_plain_formula_in_float64() -> None:
    torch.manual_seed(0)
    blk = Block(16, 2, layerscale_init=0.3).double().eval()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(blk(x), _reference_block(blk, x))


def test_residual_stream_stays_in_the_autocast_dtype() -> None:
    model = create_model("tap_nano_3d", drop_path_rate=0.2).train()
    dtypes: list[torch.dtype] = []
    for blk in model.blocks:
        blk.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.forward_features(torch.randn(2, 1, 12, 32, 32))
        assert LayerScale(4)(torch.ones(2, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert dtypes == [torch.bfloat16] * len(model.blocks)


def test_subset_drop_path_computes_only_the_kept_samples() -> None:
    torch.manual_seed(0)
    blk = Block(8, 2, drop_path=0.5).train()
    assert blk.uses_subset_drop_path
    x = torch.randn(6, 5, 8)
    drop = blk.sample_drop_path(x, torch.Generator().manual_seed(1))
    attn_keep, mlp_keep = drop
    assert attn_keep.shape == (3,) and attn_keep.dtype == torch.long  # int(6 * 0.5)
    seen: list[int] = []
    blk.attn.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    out = blk(x, drop=drop)
    assert seen == [3]  # the branch ran on 3 of 6 samples
    want = x.clone()
    want[attn_keep] += 2.0 * blk._attn_branch(x[attn_keep])
    want2 = want.clone()
    want2[mlp_keep] += 2.0 * blk._mlp_branch(want[mlp_keep])
    torch.testing.assert_close(out, want2)
    y = drop_add_residual_stochastic_depth(x, lambda t: t * 0 + 1, torch.tensor([0, 2]))
    torch.testing.assert_close(y[1], x[1])
    torch.testing.assert_close(y[0], x[0] + 3.0)  # scaled by B / B_keep = 6 / 2


def test_low_rate_drop_path_is_per_sample() -> None:
    torch.manual_seed(0)
    blk = Block(8, 2, drop_path=0.1).train()
    assert not blk.uses_subset_drop_path
    x = torch.randn(64, 3, 8)
    attn_mask, _ = blk.sample_drop_path(x, torch.Generator().manual_seed(2))
    assert attn_mask.shape == (64, 1, 1) and set(attn_mask.unique().tolist()) <= {0.0, 1.0}
    assert 0 < int((attn_mask == 0).sum()) < 20
    blk.eval()
    assert blk.sample_drop_path(x) is None


@pytest.mark.parametrize("rate", [0.05, 0.3])
def test_checkpointing_gives_the_same_gradients_with_drop_path(rate: float) -> None:
    torch.manual_seed(0)
    plain = create_model("tap_nano_3d", depth=3, drop_path_rate=rate).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    assert ckpt.grad_checkpointing
    xs = [torch.randn(4, 1, 12, 32, 32), torch.randn(8, 1, 12, 16, 16)]
    masks = [torch.rand(4, 48) < 0.3, None]
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(123)  # same draws; and the global RNG moves during recomputation
        outs = model.forward_features_list(xs, masks)
        loss = sum((o["x_norm_patchtokens"] ** 2).mean() + o["x_norm_clstoken"].sum() for o in outs)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)
    # a different draw would give different gradients: the test can fail
    torch.manual_seed(7)
    plain.zero_grad()
    outs = plain.forward_features_list(xs, masks)
    sum(o["x_norm_clstoken"].sum() for o in outs).backward()
    assert not torch.equal(plain.blocks[1].mlp.fc1.weight.grad, grads[0]["blocks.1.mlp.fc1.weight"])


def test_checkpointing_keeps_less_for_backward_and_every_n() -> None:
    def saved_bytes(model) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.forward_features(torch.randn(2, 1, 12, 32, 32))
        return sum(seen.values())

    torch.manual_seed(0)
    model = create_model("tap_nano_3d", depth=4).train()
    full = saved_bytes(model)
    model.set_grad_checkpointing(True, every=2)
    half = saved_bytes(model)
    model.set_grad_checkpointing(True)
    least = saved_bytes(model)
    assert least < half < full
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing and saved_bytes(model) == full
    with pytest.raises(ValueError, match="every"):
        model.set_grad_checkpointing(True, every=0)


def test_compiled_blocks_match_eager() -> None:
    torch.manual_seed(0)
    eager = create_model("tap_nano_3d", drop_path_rate=0.2).train()
    compiled = copy.deepcopy(eager)
    compiled.compile_blocks(backend="aot_eager", dynamic=False)
    compiled.set_grad_checkpointing(True)
    x = torch.randn(4, 1, 12, 32, 32)
    outs = []
    for model in (eager, compiled):
        torch.manual_seed(5)
        out = model.forward_features(x)["x_norm_clstoken"]
        out.sum().backward()
        outs.append((out, model.blocks[0].attn.qkv.weight.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    torch.testing.assert_close(outs[1][1], outs[0][1])
    assert list(compiled.state_dict()) == list(eager.state_dict())
