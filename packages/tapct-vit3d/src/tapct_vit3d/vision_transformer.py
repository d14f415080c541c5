"""``VisionTransformer3d``: DINOv2's ViT with a 3D patch embedding (TAP-CT).

The model follows dinov2/models/vision_transformer.py (``DinoVisionTransformer``): cls token,
register tokens without positional embedding, a learned positional embedding (cls position
included, as DINOv2 stores it) resampled to the input's patch grid, a mask token for iBOT,
pre-norm blocks with LayerScale and stochastic depth, and a final LayerNorm. Parameter names
are DINOv2's, so DINOv2-style checkpoints load with ``strict=True``. TAP-CT (paper section 3)
changes the patch embedding to a ``Conv3d`` and the positional grid to ``(t, h, w)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from . import hub
from ._checks import as_triple
from ._state_dict import LoadReport
from .block import Block, LayerScale
from .patch_embed import PatchEmbed3d, patch_grid
from .pos_embed import resample_pos_embed

__all__ = ["VisionTransformer3d"]


class VisionTransformer3d(nn.Module):
    """3D Vision Transformer with DINOv2's token layout and parameter names.

    Token sequence: ``[cls, reg_1..reg_R, patch_1..patch_N]`` with ``N = t*h*w`` patches in
    ``t h w`` order. The positional embedding ``pos_embed (1, 1 + N_trained, E)`` holds the
    cls position first (as DINOv2) and the patch positions of the trained grid
    ``img_size // patch_size``; for any other grid the patch part is resampled with
    :func:`~tapct_vit3d.resample_pos_embed`. Registers get no positional embedding.

    Args:
        img_size: Trained input size ``(D, H, W)`` in voxels; sets the positional grid.
            Must be a multiple of ``patch_size``.
        patch_size: Patch size ``(pd, ph, pw)`` in voxels (one int means a cube).
        in_chans: Input channels ``C`` (1 for CT).
        embed_dim: Token width ``E``.
        depth: Number of transformer blocks.
        num_heads: Attention heads; must divide ``embed_dim``.
        mlp_ratio: MLP hidden width over ``E`` (4.0).
        num_register_tokens: Register tokens ``R`` (TAP-CT: 4; 0 disables them).
        layerscale_init: LayerScale initial value (1e-5); ``None`` or 0 disables LayerScale.
        drop_path_rate: Stochastic depth rate (TAP-CT training: 0.2 for ViT-B, 0.1 ViT-S).
        drop_path_uniform: Same rate in every block (DINOv2's training setting) when True;
            linearly increasing from 0 to ``drop_path_rate`` when False (timm's default).
        qkv_bias: Bias on attention ``qkv``.
        proj_bias: Bias on attention output projection.
        ffn_bias: Biases in the MLP.
        norm_eps: LayerNorm epsilon (1e-6).

    Attributes:
        embed_dim: ``E``. Also ``num_features``.
        patch_size: ``(pd, ph, pw)``.
        img_size: Trained input size ``(D, H, W)``.
        grid_size: Trained patch grid ``(t, h, w)``.
        num_register_tokens: ``R``.
        n_blocks: Number of blocks.
        blocks: ``nn.ModuleList`` of :class:`~tapct_vit3d.block.Block`.
        config: Plain JSON-able dict of the constructor arguments (tuples as lists).

    Raises:
        ValueError: If a size is not positive, ``img_size`` is not a multiple of
            ``patch_size``, ``num_heads`` does not divide ``embed_dim`` or a rate is out
            of range.

    References:
        dinov2/models/vision_transformer.py; TAP-CT paper section 3 and Table 7.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = (12, 224, 224),
        patch_size: int | Sequence[int] = (4, 8, 8),
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        layerscale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = True,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.img_size = as_triple(img_size, "img_size")
        self.patch_size = as_triple(patch_size, "patch_size")
        self.grid_size = patch_grid(self.img_size, self.patch_size)
        for name, value in (
            ("in_chans", in_chans),
            ("embed_dim", embed_dim),
            ("depth", depth),
            ("num_heads", num_heads),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if embed_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide embed_dim={embed_dim}")
        if not isinstance(num_register_tokens, int) or num_register_tokens < 0:
            raise ValueError(
                f"num_register_tokens must be an int >= 0, got {num_register_tokens!r}"
            )
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")

        self.config: dict[str, Any] = {
            "img_size": list(self.img_size),
            "patch_size": list(self.patch_size),
            "in_chans": in_chans,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": float(mlp_ratio),
            "num_register_tokens": num_register_tokens,
            "layerscale_init": None if not layerscale_init else float(layerscale_init),
            "drop_path_rate": float(drop_path_rate),
            "drop_path_uniform": bool(drop_path_uniform),
            "qkv_bias": bool(qkv_bias),
            "proj_bias": bool(proj_bias),
            "ffn_bias": bool(ffn_bias),
            "norm_eps": float(norm_eps),
        }
        self.in_chans = in_chans
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        self.n_blocks = depth
        self.num_register_tokens = num_register_tokens
        self.num_prefix_tokens = 1 + num_register_tokens
        n_patches = math.prod(self.grid_size)

        self.patch_embed = PatchEmbed3d(self.patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + n_patches, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            if num_register_tokens
            else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        if drop_path_uniform:
            rates = [drop_path_rate] * depth
        else:
            rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                layerscale_init=layerscale_init,
                drop_path=rate,
                norm_eps=norm_eps,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Identity()
        self._pos_cache: tuple[tuple[Any, ...], torch.Tensor] | None = None
        self._grad_checkpointing_every = 0
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise all parameters as DINOv2 does.

        ``pos_embed`` and linear weights: truncated normal (std 0.02, linear biases 0);
        ``cls_token`` and ``register_tokens``: normal (std 1e-6); ``mask_token``: zeros;
        LayerNorm: ones/zeros; LayerScale: ``layerscale_init``; the patch projection keeps
        PyTorch's default convolution init (Kaiming uniform), as DINOv2.

        Args:
            generator: Optional CPU/device generator for reproducible init.

        References:
            dinov2/models/vision_transformer.py ``init_weights`` / ``init_weights_vit_timm``.
        """
        init = nn.init
        with torch.no_grad():
            init.trunc_normal_(self.pos_embed, std=0.02, generator=generator)
            init.normal_(self.cls_token, std=1e-6, generator=generator)
            if self.register_tokens is not None:
                init.normal_(self.register_tokens, std=1e-6, generator=generator)
            self.mask_token.zero_()
            proj = self.patch_embed.proj
            init.kaiming_uniform_(proj.weight, a=math.sqrt(5), generator=generator)
            if proj.bias is not None:
                bound = 1.0 / math.sqrt(proj.weight[0].numel())
                init.uniform_(proj.bias, -bound, bound, generator=generator)
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    init.trunc_normal_(module.weight, std=0.02, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, (nn.LayerNorm, LayerScale)):
                    module.reset_parameters()
        self._pos_cache = None

    # ------------------------------------------------------------- tokens
    def interpolate_pos_encoding(self, grid: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """Positional embedding for a patch grid, cls position first.

        The patch part is resampled from the trained grid with
        :func:`~tapct_vit3d.resample_pos_embed` (identity on the trained grid). Without
        autograd (inference) the result is cached per grid until ``pos_embed`` changes.

        Args:
            grid: Target patch grid ``(t, h, w)``.
            dtype: Output dtype.

        Returns:
            Tensor ``(1, 1 + t*h*w, E)``.
        """
        grid = tuple(int(g) for g in grid)
        pos = self.pos_embed
        if grid == self.grid_size:
            return pos.to(dtype)
        cacheable = not (torch.is_grad_enabled() and pos.requires_grad)
        key = (grid, dtype, pos.device, pos.data_ptr(), pos._version)
        if cacheable and self._pos_cache is not None and self._pos_cache[0] == key:
            return self._pos_cache[1]
        patch_pos = resample_pos_embed(pos[:, 1:], self.grid_size, grid)
        out = torch.cat((pos[:, :1], patch_pos), dim=1).to(dtype)
        if cacheable:
            self._pos_cache = (key, out)
        return out

    def prepare_tokens_with_masks(
        self, x: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Embed patches, apply the mask token, add positions and insert registers.

        Order (as DINOv2): patch embedding -> mask token replaces masked patch embeddings
        -> prepend cls -> add positional embedding -> insert registers after cls.

        Args:
            x: Volume batch ``(B, C, D, H, W)``; D, H, W multiples of ``patch_size``.
            masks: Optional ``(B, N)`` bool, True where the patch is replaced by the mask
                token. When None (or all False) the mask token still enters the graph with a
                zero contribution, so DDP never sees it as unused.

        Returns:
            ``(tokens, grid)``: tokens ``(B, 1 + R + N, E)`` and the grid ``(t, h, w)``.

        Raises:
            ValueError: Bad input size (names the size and the patch) or mask shape.
            TypeError: If ``masks`` is not a bool tensor.
        """
        B = x.shape[0]
        tokens, grid = self.patch_embed(x)  # (B, N, E)
        cls: torch.Tensor = self.cls_token
        if masks is not None:
            if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
                raise TypeError(
                    f"masks must be a bool tensor, got {getattr(masks, 'dtype', masks)!r}"
                )
            if masks.shape != tokens.shape[:2]:
                raise ValueError(
                    f"masks must have shape (B, N)={tuple(tokens.shape[:2])} for grid {grid}, "
                    f"got {tuple(masks.shape)}"
                )
            mask_token = self.mask_token.to(tokens.dtype).unsqueeze(0)  # (1, 1, E)
            tokens = torch.where(masks.unsqueeze(-1), mask_token, tokens)
        else:
            # zero contribution keeps the mask token in the graph (no unused DDP parameter)
            cls = cls + self.mask_token.sum() * 0.0
        # same sums as DINOv2's cat(cls, x) + pos, then registers after cls, in one cat
        pos = self.interpolate_pos_encoding(grid, tokens.dtype)  # (1, 1 + N, E)
        parts = [(cls.to(tokens.dtype) + pos[:, :1]).expand(B, -1, -1)]
        if self.register_tokens is not None:
            parts.append(self.register_tokens.to(tokens.dtype).expand(B, -1, -1))
        parts.append(tokens + pos[:, 1:])
        return torch.cat(parts, dim=1), grid

    def _split(
        self,
        x_norm: torch.Tensor,
        x_prenorm: torch.Tensor,
        masks: torch.Tensor | None,
        grid: tuple[int, int, int],
    ) -> dict[str, Any]:
        R = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : R + 1],
            "x_norm_patchtokens": x_norm[:, R + 1 :],
            "x_prenorm": x_prenorm,
            "masks": masks,
            "grid_size": grid,
        }

    # ------------------------------------------------------------ forwards
    def forward_features(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        masks: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Run the backbone and return normalised tokens (DINOv2's output dict).

        A list ``x`` is forwarded to :meth:`forward_features_list` (as DINOv2 does).

        Args:
            x: Volume batch ``(B, C, D, H, W)``, float; D, H, W multiples of ``patch_size``.
            masks: Optional ``(B, N)`` bool iBOT mask (True = replaced by the mask token).
            generator: Optional generator for stochastic depth (training only).

        Returns:
            Dict with ``x_norm_clstoken (B, E)``, ``x_norm_regtokens (B, R, E)``,
            ``x_norm_patchtokens (B, N, E)``, ``x_prenorm (B, 1 + R + N, E)`` (before the
            final norm), ``masks`` (as given) and ``grid_size (t, h, w)``.

        Raises:
            ValueError: If an input size is not a multiple of the patch size (the message
                names the size and the patch), or the mask shape is wrong.
        """
        if isinstance(x, (list, tuple)):
            masks_list = [None] * len(x) if masks is None else masks
            return self.forward_features_list(x, masks_list, generator=generator)  # type: ignore[arg-type]
        return self._forward_single(x, masks, generator)  # type: ignore[arg-type]

    def _forward_single(
        self, x: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator | None
    ) -> dict[str, Any]:
        tokens, grid = self.prepare_tokens_with_masks(x, masks)
        for i, blk in enumerate(self.blocks):
            tokens = self._run_block(i, blk, tokens, generator)
        return self._split(self.norm(tokens), tokens, masks, grid)

    def _run_block(
        self, index: int, blk: nn.Module, tokens: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """One block; drop-path draws made here, outside any checkpoint or compiled code."""
        inner: Any = getattr(blk, "_orig_mod", blk)  # a compiled block's module
        drop = inner.sample_drop_path(tokens, generator)
        if self._checkpointed(index) and torch.is_grad_enabled():
            # the draws are inputs of the checkpointed call: the recomputation in backward
            # drops exactly the samples the forward dropped
            out: torch.Tensor = torch.utils.checkpoint.checkpoint(
                blk, tokens, None, drop, use_reentrant=False
            )
            return out
        return blk(tokens, None, drop)

    def _checkpointed(self, index: int) -> bool:
        every = self._grad_checkpointing_every
        return every > 0 and index % every == 0

    def set_grad_checkpointing(self, enable: bool = True, every: int = 1) -> None:
        """Recompute block activations in backward instead of keeping them (as timm).

        Uses non-reentrant ``torch.utils.checkpoint``: a checkpointed block keeps only its
        input tokens (and its drop-path draws, which are made before the call and passed
        in, so the recomputation drops the same samples). Applies in training and
        evaluation whenever autograd is recording.

        Args:
            enable: Turn checkpointing on or off.
            every: Checkpoint blocks ``0, every, 2 * every, ...`` (1: every block, the
                least memory; 2: every other block, half the recomputation).

        Raises:
            ValueError: If ``every < 1``.
        """
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self._grad_checkpointing_every = every if enable else 0

    @property
    def grad_checkpointing(self) -> bool:
        """Whether :meth:`set_grad_checkpointing` is on."""
        return self._grad_checkpointing_every > 0

    def compile_blocks(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` every block in place (``nn.Module.compile``).

        Only the blocks are compiled: the token preparation (variable grids, masks) and
        the drop-path draws stay eager, so each crop size gives one graph per block shape
        and no random op is traced. Works with :meth:`set_grad_checkpointing`. Parameter
        names and the state dict do not change.

        Args:
            **compile_kwargs: Passed to ``torch.compile`` (e.g. ``backend="inductor"``,
                ``mode="max-autotune-no-cudagraphs"``, ``dynamic=False``).
        """
        for blk in self.blocks:
            blk.compile(**compile_kwargs)

    def forward_features_list(
        self,
        xs: Sequence[torch.Tensor],
        masks_list: Sequence[torch.Tensor | None],
        *,
        generator: torch.Generator | None = None,
    ) -> list[dict[str, Any]]:
        """Run crops of several sizes (e.g. global and local crops) in one call.

        Each element is prepared on its own grid, then every block runs over all elements
        before the next block (as DINOv2's ``forward_features_list`` without xFormers);
        results equal separate :meth:`forward_features` calls.

        Args:
            xs: Batches ``(B_i, C, D_i, H_i, W_i)``.
            masks_list: One ``(B_i, N_i)`` bool mask or None per element.
            generator: Optional generator for stochastic depth.

        Returns:
            One output dict per element, as :meth:`forward_features`.

        Raises:
            ValueError: If the lengths differ or an element has a bad size or mask.
        """
        if len(xs) != len(masks_list):
            raise ValueError(f"got {len(xs)} inputs but {len(masks_list)} masks")
        prepared = [self.prepare_tokens_with_masks(x, m) for x, m in zip(xs, masks_list)]
        tokens = [t for t, _ in prepared]
        for i, blk in enumerate(self.blocks):
            tokens = [self._run_block(i, blk, t, generator) for t in tokens]
        return [
            self._split(self.norm(t), t, m, grid)
            for t, m, (_, grid) in zip(tokens, masks_list, prepared)
        ]

    def forward(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, *, is_training: bool = False
    ) -> torch.Tensor | dict[str, Any]:
        """Return the normalised cls token ``(B, E)`` (DINOv2 with ``is_training=False``).

        Args:
            x: Volume batch ``(B, C, D, H, W)``.
            masks: Optional ``(B, N)`` bool mask.
            is_training: Return the full :meth:`forward_features` dict instead.

        Returns:
            ``(B, E)`` cls embedding, or the dict when ``is_training``.
        """
        out = self._forward_single(x, masks, None)
        if is_training:
            return out
        return self.head(out["x_norm_clstoken"])

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Any, ...]:
        """Outputs of selected blocks, as DINOv2's ``get_intermediate_layers``.

        Args:
            x: Volume batch ``(B, C, D, H, W)``.
            n: The last ``n`` blocks (int) or explicit block indices (sequence).
            reshape: Return patch features as ``(B, E, t, h, w)`` instead of ``(B, N, E)``.
            return_class_token: Return ``(patch_features, cls (B, E))`` pairs.
            norm: Apply the final LayerNorm to each output.

        Returns:
            Tuple with one entry per selected block, in block order; registers are dropped.

        Raises:
            ValueError: If ``n`` selects a block that does not exist.
        """
        if isinstance(n, int):
            if not 1 <= n <= self.n_blocks:
                raise ValueError(f"n={n} must be in [1, {self.n_blocks}]")
            wanted = list(range(self.n_blocks - n, self.n_blocks))
        else:
            wanted = [int(i) for i in n]
            bad = [i for i in wanted if not 0 <= i < self.n_blocks]
            if bad:
                raise ValueError(f"block indices {bad} out of range [0, {self.n_blocks})")
        tokens, grid = self.prepare_tokens_with_masks(x)
        outputs = []
        for i, blk in enumerate(self.blocks):
            tokens = blk(tokens)
            if i in wanted:
                outputs.append(tokens)
            if i >= max(wanted):
                break
        if norm:
            outputs = [self.norm(o) for o in outputs]
        cls = [o[:, 0] for o in outputs]
        patches = [o[:, self.num_prefix_tokens :] for o in outputs]
        if reshape:
            t, h, w = grid
            patches = [rearrange(p, "b (t h w) e -> b e t h w", t=t, h=h, w=w) for p in patches]
        if return_class_token:
            return tuple(zip(patches, cls))
        return tuple(patches)

    # -------------------------------------------------------------- weights
    def save_pretrained(
        self,
        save_directory: str | Path,
        metadata: Mapping[str, Any] | None = None,
        model_card: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``model.safetensors``, ``config.json`` and optionally a model card.

        ``metadata`` (JSON-serialisable) goes under ``config.json``'s ``"tapct"`` key;
        ``model_card`` holds :func:`tapct_vit3d.write_model_card`'s keyword arguments. See
        :func:`tapct_vit3d.save_pretrained` and :func:`tapct_vit3d.read_model_metadata`.
        """
        return hub.save_pretrained(self, save_directory, metadata, model_card)

    @classmethod
    def from_pretrained(cls, dir_or_hub_id: str | Path, **kwargs: Any) -> VisionTransformer3d:
        """Load a model folder, a weights file or a hub id (``tapct_vit3d.load_pretrained``).

        See :func:`tapct_vit3d.hub.from_pretrained` for the arguments and errors.
        """
        return hub.from_pretrained(cls, dir_or_hub_id, **kwargs)

    def load_weights(self, source: Any, **kwargs: Any) -> LoadReport:
        """Load a checkpoint of any supported layout into this model in place.

        See :func:`tapct_vit3d.load_weights` (2D inflation, prefix detection, resampling,
        ``strict=False`` for initialising pretraining).
        """
        return hub.load_weights(self, source, **kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VisionTransformer3d:
        """Build a model from its :attr:`config` dict (unknown keys raise ``TypeError``)."""
        return cls(**dict(config))
