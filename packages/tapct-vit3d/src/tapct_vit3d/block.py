"""The pre-norm transformer block of DINOv2, with its parts.

Parameter names follow DINOv2 (dinov2/layers/block.py, attention.py, mlp.py,
layer_scale.py, drop_path.py): ``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1.gamma``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``. Attention uses
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels; memory linear in the
number of tokens with the flash / memory-efficient backends).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention", "Block", "DropPath", "LayerScale", "Mlp"]


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

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 proj_bias: bool = True) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all tokens.

        Args:
            x: Tokens ``(B, N, E)``.

        Returns:
            Tokens ``(B, N, E)``.
        """
        B, N, E = x.shape
        # (B, N, 3E) -> 3 x (B, heads, N, E/heads) without an extra contiguous copy
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, E // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, E/heads)
        return self.proj(x.transpose(1, 2).reshape(B, N, E))


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to tokens ``(B, N, E)``; returns ``(B, N, E)``."""
        return self.fc2(self.act(self.fc1(x)))


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
        """Scale tokens ``(B, N, E)`` channel-wise; returns ``(B, N, E)``."""
        return x * self.gamma


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
        dinov2/layers/block.py (``Block``).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 layerscale_init: float | None = 1e-5, drop_path: float = 0.0,
                 norm_eps: float = 1e-6, qkv_bias: bool = True, proj_bias: bool = True,
                 ffn_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Run the block.

        Args:
            x: Tokens ``(B, N, E)``.
            generator: Optional generator for stochastic depth.

        Returns:
            Tokens ``(B, N, E)``.
        """
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))), generator)
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))), generator)
