"""Tiny test-local backbones with the DINOv2 interface (tapct_eval needs nothing more)."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn


class LocalBackbone(nn.Module):
    """Patch embedding only: features of a patch depend on that patch's voxels alone."""

    def __init__(self, patch_size=(2, 4, 4), embed_dim=8, seed=0):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.embed_dim = embed_dim
        torch.manual_seed(seed)
        self.proj = nn.Conv3d(1, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward_features(self, x):
        tokens = rearrange(self.proj(x), "b e t h w -> b (t h w) e")
        return {"x_norm_patchtokens": tokens, "x_norm_clstoken": tokens.mean(1)}


class TinyViT(nn.Module):
    """Patch embedding + cls token + one pre-norm transformer layer (global attention)."""

    def __init__(self, patch_size=(2, 4, 4), embed_dim=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.patch_size = tuple(patch_size)
        self.embed_dim = embed_dim
        self.proj = nn.Conv3d(1, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.block = nn.TransformerEncoderLayer(
            embed_dim, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward_features(self, x):
        tokens = rearrange(self.proj(x), "b e t h w -> b (t h w) e")
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        tokens = self.norm(self.block(tokens))
        return {"x_norm_clstoken": tokens[:, 0], "x_norm_patchtokens": tokens[:, 1:]}


class LayersOnlyViT(TinyViT):
    """Offers only DINOv2's get_intermediate_layers (no forward_features dict)."""

    def get_intermediate_layers(self, x, n=1, reshape=False, return_class_token=False, norm=True):
        out = TinyViT.forward_features(self, x)
        t, h, w = (s // p for s, p in zip(x.shape[2:], self.patch_size))
        patch = rearrange(out["x_norm_patchtokens"], "b (t h w) e -> b e t h w", t=t, h=h, w=w)
        return ((patch, out["x_norm_clstoken"]),)

    forward_features = None  # type: ignore[assignment]


@pytest.fixture
def local_backbone():
    return LocalBackbone()


@pytest.fixture
def tiny_vit():
    return TinyViT()


@pytest.fixture
def layers_only_vit():
    return LayersOnlyViT()
