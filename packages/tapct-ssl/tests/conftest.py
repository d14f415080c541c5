"""Fixtures of the tapct_ssl tests: a tiny test-local backbone and batch builders.

The backbone is deliberately not ``tapct_vit3d``: the objective must work with any module
whose ``forward_features`` returns DINOv2's keys. It mimics DINOv2's parameter names
(``patch_embed.proj``, ``cls_token``, ``register_tokens``, ``mask_token``, ``pos_embed``,
``blocks.{i}.norm1``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.ls1.gamma``, ``norm``) so the
parameter-group tests exercise the real naming rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, e = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, e/h)
        return self.proj(y.transpose(1, 2).reshape(b, n, e))


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: tuple[int, int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, E)


class TinyBackbone(nn.Module):
    """A 2-block transformer over (B, C, D, H, W) inputs with DINOv2's output keys."""

    def __init__(
        self,
        embed_dim: int = 16,
        depth: int = 2,
        heads: int = 2,
        patch: tuple[int, int, int] = (2, 4, 4),
        n_registers: int = 2,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_register_tokens = n_registers
        self.patch_embed = _PatchEmbed(1, embed_dim, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(1, n_registers, embed_dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(_Block(embed_dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    def forward_features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        tokens = self.patch_embed(x)
        if masks is not None:
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        else:
            tokens = tokens + 0.0 * self.mask_token.sum()
        tokens = tokens + self.pos_embed
        b = tokens.shape[0]
        x = torch.cat(
            [self.cls_token.expand(b, -1, -1), self.register_tokens.expand(b, -1, -1), tokens],
            dim=1,
        )
        for block in self.blocks:
            x = block(x)
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward_features_list(
        self, xs: Sequence[torch.Tensor], masks_list: Sequence[torch.Tensor | None]
    ) -> list[dict[str, torch.Tensor]]:
        return [self.forward_features(x, m) for x, m in zip(xs, masks_list)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["x_norm_clstoken"]


class Crops(NamedTuple):
    """The objective's explicit inputs: ``objective(*crops, teacher_temp)``."""

    global_crops: torch.Tensor
    local_crops: torch.Tensor | None
    masks: torch.Tensor


def collate(
    global_crops: Sequence[torch.Tensor],
    local_crops: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
) -> Crops:
    """Crop-major batch from per-crop tensors, as tapct_data's collate does.

    Args:
        global_crops: n_g tensors (B, C, D, H, W).
        local_crops: n_l tensors (B, C, d, h, w).
        masks: n_g bool tensors (B, N).
    """
    return Crops(
        torch.cat(list(global_crops)),
        torch.cat(list(local_crops)) if local_crops else None,
        torch.cat(list(masks)),
    )


def make_crops(
    n_images: int,
    *,
    n_local: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    global_size: tuple[int, int, int] = (4, 8, 8),
    local_size: tuple[int, int, int] = (4, 4, 4),
    n_tokens: int = 8,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Random per-crop inputs and masks; image 0 of crop 1 is never masked."""
    g = torch.Generator().manual_seed(seed)
    globals_ = [torch.randn(n_images, 1, *global_size, generator=g, dtype=dtype) for _ in range(2)]
    locals_ = [
        torch.randn(n_images, 1, *local_size, generator=g, dtype=dtype) for _ in range(n_local)
    ]
    masks = [torch.rand(n_images, n_tokens, generator=g) < 0.4 for _ in range(2)]
    masks[1][0] = False
    masks[0][:, 0] = True  # at least one masked token per image of crop 0
    return globals_, locals_, masks


@pytest.fixture
def tiny_backbone() -> Callable[..., TinyBackbone]:
    """Factory of seeded ``TinyBackbone``s."""

    def factory(seed: int = 0, **kwargs: object) -> TinyBackbone:
        torch.manual_seed(seed)
        return TinyBackbone(**kwargs)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def batch_tools() -> tuple[Callable[..., Crops], Callable[..., tuple]]:
    """``(collate, make_crops)``."""
    return collate, make_crops


@pytest.fixture
def gloo_group(tmp_path) -> Iterator[None]:
    """A 1-process gloo process group on CPU (torch.distributed initialised)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
