"""The pre-norm transformer block of DINOv2, with its parts.

Parameter names follow DINOv2 (dinov2/layers/block.py, attention.py, mlp.py,
layer_scale.py, drop_path.py): ``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1.gamma``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``. Attention uses
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels; memory linear in the
number of tokens with the flash / memory-efficient backends).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SUBSET_DROP_PATH_THRESHOLD",
    "Attention",
    "Block",
    "DropPath",
    "LayerScale",
    "Mlp",
    "drop_add_residual_stochastic_depth",
]


#: Above this drop rate a block computes its branches only on the kept samples
#: (DINOv2's ``drop_add_residual_stochastic_depth``); at or below it, per-sample masks.
SUBSET_DROP_PATH_THRESHOLD = 0.1


def _scaled_linear(layer: nn.Linear, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """``layer(x) * scale`` as one linear: ``x @ (W * scale[:, None])^T + b * scale``.

    Equal up to rounding; autograd keeps ``x`` (which ``layer`` keeps anyway) instead of
    also keeping ``layer(x)`` for the scale's gradient.
    """
    if scale is None:
        return layer(x)
    bias = None if layer.bias is None else layer.bias * scale
    return F.linear(x, layer.weight * scale.unsqueeze(-1), bias)


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm in ``x``'s dtype (float32 statistics inside the kernel).

    Under autocast ``layer_norm`` would cast a bfloat16 input to float32, keep that
    float32 copy for backward and return float32 (then cast again by the next linear);
    here the input and output stay in the residual stream's dtype.
    """
    weight = None if norm.weight is None else norm.weight.to(x.dtype)
    bias = None if norm.bias is None else norm.bias.to(x.dtype)
    device = x.device.type
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)
    with torch.autocast(device_type=device, enabled=False):
        return F.layer_norm(x, norm.normalized_shape, weight, bias, norm.eps)


def drop_add_residual_stochastic_depth(
    x: torch.Tensor,
    residual: Callable[[torch.Tensor], torch.Tensor],
    keep_indices: torch.Tensor,
) -> torch.Tensor:
    """``x`` plus the branch computed only on the kept samples, scaled by ``B / B_keep``.

    DINOv2's subset stochastic depth: samples not in ``keep_indices`` skip the branch
    (no compute, no activations kept); the kept ones get ``residual(x[keep])`` scaled so
    the expectation matches the identity-plus-branch block.

    Args:
        x: ``(B, N, E)`` residual stream.
        residual: the branch, ``(B_keep, N, E) -> (B_keep, N, E)``.
        keep_indices: ``(B_keep,)`` long, distinct sample indices.

    Returns:
        ``(B, N, E)`` in ``x``'s dtype.

    References:
        dinov2/layers/block.py (``drop_add_residual_stochastic_depth``).
    """
    b = x.shape[0]
    branch = residual(x.index_select(0, keep_indices))  # (B_keep, N, E)
    scale = b / keep_indices.shape[0]
    # index_put(accumulate) rather than DINOv2's index_add: same sum, but autograd does
    # not keep the (B_keep, N, E) branch output for backward (index_add saves its source)
    return x.index_put((keep_indices,), branch.to(x.dtype) * scale, accumulate=True)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection.

    Args:
        dim: Token width ``E``.
        num_heads: Number of heads; must divide ``dim``.
        qkv_bias: Bias on the ``qkv`` projection (DINOv2: True).
        proj_bias: Bias on the output projection (DINOv2: True).

    Raises:
        ValueError: If ``num_heads`` does not divide ``dim``.

    References:
        dinov2/layers/attention.py.
    """

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over all tokens.

        Args:
            x: Tokens ``(B, N, E)``.
            out_scale: Optional ``(E,)`` per-channel factor folded into the output
                projection (``proj(y) * out_scale`` computed as one linear with the scaled
                weight: LayerScale without keeping its input for backward).

        Returns:
            Tokens ``(B, N, E)``, in ``x``'s (autocast) dtype.
        """
        B, N, E = x.shape
        # (B, N, 3E) -> 3 x (B, heads, N, E/heads); unbind gives views, whose backward
        # writes into one gradient buffer (indexing qkv[i] zero-fills three)
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, E // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, E/heads)
        return _scaled_linear(self.proj, y.transpose(1, 2).reshape(B, N, E), out_scale)


class Mlp(nn.Module):
    """Feed-forward network ``fc2(GELU(fc1(x)))`` (exact erf GELU, as DINOv2).

    Args:
        dim: Token width ``E``.
        hidden_dim: Hidden width (``mlp_ratio * E``).
        bias: Biases on both layers (DINOv2 ``ffn_bias``: True).

    References:
        dinov2/layers/mlp.py.
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, out_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the MLP to tokens ``(B, N, E)``; returns ``(B, N, E)``.

        ``out_scale`` (``(E,)``, optional) is folded into ``fc2`` as in
        :meth:`Attention.forward`.
        """
        return _scaled_linear(self.fc2, self.act(self.fc1(x)), out_scale)


class LayerScale(nn.Module):
    """Per-channel learned scale ``x * gamma`` (CaiT), ``gamma`` initialised to ``init_values``.

    Args:
        dim: Token width ``E``.
        init_values: Initial value of every entry of ``gamma`` (TAP-CT / DINOv2: 1e-5).

    References:
        dinov2/layers/layer_scale.py; Touvron et al. 2021 (CaiT).
    """

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.init_values = float(init_values)
        self.gamma = nn.Parameter(torch.full((dim,), self.init_values))

    def reset_parameters(self) -> None:
        """Refill ``gamma`` with ``init_values``."""
        with torch.no_grad():
            self.gamma.fill_(self.init_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale tokens ``(B, N, E)`` channel-wise; returns ``(B, N, E)`` in ``x``'s dtype.

        ``gamma`` is cast to ``x``'s dtype, so a bfloat16 residual stream under autocast
        stays bfloat16 (``x * gamma`` with a float32 ``gamma`` would promote it).
        """
        return x * self.gamma.to(x.dtype)


class DropPath(nn.Module):
    """Per-sample stochastic depth: drop a residual branch for whole samples.

    In training each sample's branch output is zeroed with probability ``drop_prob`` and
    the kept ones are scaled by ``1 / (1 - drop_prob)``; in eval mode it is the identity.

    Args:
        drop_prob: Probability of dropping the branch for a sample, in ``[0, 1)``.

    Raises:
        ValueError: If ``drop_prob`` is outside ``[0, 1)``.

    References:
        dinov2/layers/drop_path.py; Huang et al. 2016 (stochastic depth).
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply stochastic depth.

        Args:
            x: Branch output ``(B, ...)``.
            generator: Optional random generator on ``x``'s device (reproducible drops).

        Returns:
            Tensor of the same shape as ``x``.
        """
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = torch.rand(shape, dtype=x.dtype, device=x.device, generator=generator) < keep
        return x * mask.to(x.dtype) / keep


class Block(nn.Module):
    """Pre-norm transformer block ``x + DP(LS(attn(LN(x))))`` then ``x + DP(LS(mlp(LN(x))))``.

    The residual stream stays in the input's dtype (bfloat16 under autocast): the norms
    run in that dtype and LayerScale is folded into the branch's last linear. Stochastic
    depth in training follows DINOv2: above a rate of
    :data:`SUBSET_DROP_PATH_THRESHOLD` (0.1) each branch is computed only on a random
    subset of ``max(1, int(B (1 - p)))`` samples and added with weight ``B / B_keep``
    (:func:`drop_add_residual_stochastic_depth`); at or below it each sample's branch is
    multiplied by ``Bernoulli(1 - p) / (1 - p)``. The random draws are made by
    :meth:`sample_drop_path` and passed to :meth:`forward`, so a checkpointed block
    recomputes with the same samples dropped.

    Args:
        dim: Token width ``E``.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``E`` (4.0).
        layerscale_init: LayerScale initial value (1e-5); ``None`` disables LayerScale
            (``ls1``/``ls2`` become identities without parameters).
        drop_path: Stochastic depth probability of this block.
        norm_eps: LayerNorm epsilon (DINOv2: 1e-6).
        qkv_bias: Bias on the ``qkv`` projection.
        proj_bias: Bias on the attention output projection.
        ffn_bias: Biases in the MLP.

    References:
        dinov2/layers/block.py (``Block``, ``drop_add_residual_stochastic_depth``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        layerscale_init: float | None = 1e-5,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.drop_path = DropPath(drop_path)

    @property
    def drop_prob(self) -> float:
        """This block's stochastic depth rate."""
        return self.drop_path.drop_prob

    @property
    def uses_subset_drop_path(self) -> bool:
        """Whether training computes branches only on kept samples (rate > 0.1)."""
        return self.drop_prob > SUBSET_DROP_PATH_THRESHOLD

    def sample_drop_path(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Draw this step's stochastic depth for both branches (None when inactive).

        Args:
            x: The block input ``(B, N, E)`` (batch size, device and dtype).
            generator: Optional generator on ``x``'s device (reproducible drops).

        Returns:
            None in eval mode or at rate 0; otherwise one tensor per branch (attention,
            MLP): ``(B_keep,)`` long kept-sample indices above the subset threshold,
            else ``(B, 1, 1)`` keep masks ``{0, 1}`` in ``x``'s dtype (the branch is
            multiplied by ``mask / (1 - p)``). Drawn on ``x``'s device, no host sync.
        """
        p = self.drop_prob
        if not self.training or p == 0.0:
            return None
        b = x.shape[0]
        if self.uses_subset_drop_path:
            n_keep = max(int(b * (1.0 - p)), 1)
            return tuple(  # type: ignore[return-value]
                torch.randperm(b, device=x.device, generator=generator)[:n_keep] for _ in range(2)
            )
        return tuple(  # type: ignore[return-value]
            (torch.rand((b, 1, 1), device=x.device, generator=generator) >= p).to(x.dtype)
            for _ in range(2)
        )

    def _attn_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(_layer_norm(self.norm1, x), _gamma(self.ls1, x))

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(_layer_norm(self.norm2, x), _gamma(self.ls2, x))

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        drop: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run the block.

        Args:
            x: Tokens ``(B, N, E)``.
            generator: Optional generator for stochastic depth (used when ``drop`` is
                not given).
            drop: This step's draws from :meth:`sample_drop_path`; drawn here when None
                (training with a rate > 0). Pass them explicitly to recompute the block
                with the same drops (activation checkpointing).

        Returns:
            Tokens ``(B, N, E)`` in ``x``'s dtype.
        """
        if drop is None:
            drop = self.sample_drop_path(x, generator)
        if drop is None:
            x = x + self._attn_branch(x)
            return x + self._mlp_branch(x)
        attn_drop, mlp_drop = drop
        if self.uses_subset_drop_path:
            x = drop_add_residual_stochastic_depth(x, self._attn_branch, attn_drop)
            return drop_add_residual_stochastic_depth(x, self._mlp_branch, mlp_drop)
        keep = 1.0 - self.drop_prob
        x = x + self._attn_branch(x) * attn_drop / keep
        return x + self._mlp_branch(x) * mlp_drop / keep


def _gamma(ls: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """LayerScale's ``gamma`` (folded into the branch's last linear), or None."""
    return ls.gamma if isinstance(ls, LayerScale) else None
