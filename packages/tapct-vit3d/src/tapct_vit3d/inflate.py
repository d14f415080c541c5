"""Initialise a ``VisionTransformer3d`` from a 2D DINOv2 or timm ViT state dict.

The 2D patch kernel ``(E, C, ph, pw)`` is resampled in-plane when the patch sizes differ
(FlexiViT, e.g. DINOv2's 14 to our 8 or 16) and inflated along depth to
``(E, C, pd, ph, pw)``, the 2D positional embedding is resampled onto the 3D grid, and
cls/register/mask tokens and all block weights are carried over (their shapes do not
depend on dimensionality). This module reads the target model through
:class:`~tapct_vit3d._state_dict.ViTLike` and does not import the model class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from ._state_dict import ViTLike, check_against_model, normalize_keys, square_side
from .patch_embed import resample_patch_embed
from .pos_embed import resample_pos_embed

__all__ = ["inflate_2d_state_dict", "inflate_patch_kernel"]

DepthRule = Literal["mean", "center"]


def inflate_patch_kernel(
    weight: torch.Tensor, depth: int, rule: DepthRule = "mean"
) -> torch.Tensor:
    """Inflate a 2D patch kernel ``(E, C, ph, pw)`` to ``(E, C, depth, ph, pw)``.

    Rules (identical when ``depth == 1``, where the 3D model on a one-slice volume equals
    the 2D model exactly):

    - ``"mean"`` (I3D, Carreira & Zisserman 2017): the kernel is repeated over depth and
      divided by ``depth``. A volume that is constant along depth inside a patch gives the
      2D response of that slice; in general the response is that of the slab's mean slice.
    - ``"center"``: the kernel sits in the centre slice ``depth // 2`` and the other slices
      are zero; the response is the 2D response of that one slice of each patch.

    Args:
        weight: 2D kernel ``(E, C, ph, pw)``.
        depth: Patch depth ``pd >= 1``.
        rule: ``"mean"`` or ``"center"``.

    Returns:
        Kernel ``(E, C, depth, ph, pw)``, same dtype and device.

    Raises:
        ValueError: If ``weight`` is not 4D, ``depth < 1`` or ``rule`` is unknown.
    """
    if weight.ndim != 4:
        raise ValueError(f"2D patch kernel must be (E, C, ph, pw), got {tuple(weight.shape)}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if rule == "mean":
        return weight.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth
    if rule == "center":
        out = weight.new_zeros((*weight.shape[:2], depth, *weight.shape[2:]))
        out[:, :, depth // 2] = weight
        return out
    raise ValueError(f"rule must be 'mean' or 'center', got {rule!r}")


def inflate_2d_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: ViTLike,
    *,
    depth_rule: DepthRule = "mean",
    old_grid: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Map a 2D DINOv2 (hub names) or timm ViT state dict onto ``model``.

    Supported layouts:

    - DINOv2 hub (``dinov2_vits14``, ``dinov2_vits14_reg``, ...): ``pos_embed (1, 1 + N, E)``
      with the cls position, ``register_tokens``, ``mask_token``.
    - timm ``vit_*_dinov2``: the same layout (no registers, no mask token).
    - timm ``vit_*_reg4_dinov2`` (``no_embed_class=True``): ``reg_token`` and a
      ``pos_embed (1, N, E)`` without prefix positions; the cls position becomes zero
      (timm folded it into ``cls_token``, so this is exact).
    - timm with ``reg_tokens`` and ``no_embed_class=False``: register positions are folded
      into the register tokens (registers carry no positional embedding here).

    Conversions: a patch kernel of another in-plane size (DINOv2's 14x14 into an 8x8 or
    16x16 model) is resampled with :func:`~tapct_vit3d.resample_patch_embed` (FlexiViT's
    pseudo-inverse), then inflated with :func:`inflate_patch_kernel` (exact for
    ``pd == 1``); 3 input channels onto a 1-channel model are summed (timm's
    ``adapt_input_conv``: a grey image replicated to RGB gives the same response); the
    patch positions on the 2D grid ``(h0, w0)`` are resampled to ``model.grid_size`` with
    :func:`~tapct_vit3d.resample_pos_embed` (from depth 1 every slice gets the same
    in-plane position, so depth position is learned from zero); a mask token missing from
    the checkpoint keeps the model's current value. Heads are dropped.

    Args:
        state_dict: 2D ViT tensors by name (a prefix such as ``module.`` is detected).
        model: Target model; its register count must match.
        depth_rule: Kernel inflation rule for ``pd > 1``: ``"mean"`` or ``"center"``.
        old_grid: 2D grid ``(h0, w0)`` of the checkpoint's positional embedding when it is
            not square.

    Returns:
        A dict with exactly ``model.state_dict()``'s keys, ready for
        ``model.load_state_dict(..., strict=True)``.

    Raises:
        ValueError: Width, register count or channel count mismatch, an unsupported
            layer, a non-inferable positional grid, or other key mismatches (listed).

    References:
        dinov2/hub/backbones.py and dinov2/models/vision_transformer.py (layout);
        timm/models/vision_transformer.py ``_convert_dinov2`` (the timm layout);
        Carreira & Zisserman 2017 (kernel inflation); Beyer et al. 2023 (FlexiViT).
    """
    reference = model.state_dict()
    out, _ = convert_2d(normalize_keys(state_dict, reference), model,
                        depth_rule=depth_rule, old_grid=old_grid, strict=True)
    out.setdefault("mask_token", reference["mask_token"])
    check_against_model(out, reference)
    return out


def convert_2d(
    sd: Mapping[str, torch.Tensor],
    model: ViTLike,
    *,
    depth_rule: DepthRule = "mean",
    old_grid: Sequence[int] | None = None,
    strict: bool = True,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert bare-named 2D tensors to the model's shapes (see :func:`inflate_2d_state_dict`).

    Args:
        sd: 2D ViT tensors by bare name (prefix stripped, heads dropped).
        model: Target model.
        depth_rule: Kernel inflation rule.
        old_grid: 2D grid of the checkpoint's positional embedding if not square.
        strict: Raise on a register count mismatch; when False the checkpoint's
            registers are left out (the model keeps its own).

    Returns:
        ``(tensors, conversions)``: converted tensors (only the names the checkpoint
        provides; other names pass through unchanged) and one line per conversion.

    Raises:
        ValueError: A missing kernel, cls token or positional embedding, a channel or
            register mismatch (``strict``), or a positional grid that cannot be inferred.
    """
    sd = dict(sd)
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    for key in ("patch_embed.proj.weight", "cls_token", "pos_embed"):
        if key not in sd:
            raise ValueError(f"2D state dict has no {key!r}; keys start with {sorted(sd)[:8]}")

    # --- patch kernel (E, C, ph0, pw0) -> (E, C, ph, pw) -> (E, C', pd, ph, pw)
    kernel = sd.pop("patch_embed.proj.weight")
    pd, ph, pw = model.patch_size
    if kernel.ndim != 4:
        raise ValueError(f"2D patch kernel must be (E, C, ph, pw), got {tuple(kernel.shape)}")
    shape0 = tuple(kernel.shape)
    if tuple(kernel.shape[2:]) != (ph, pw):
        kernel = resample_patch_embed(kernel, (ph, pw))
        notes.append(f"patch_embed.proj.weight: in-plane patch {shape0[2:]} -> {(ph, pw)} "
                     "(FlexiViT pseudo-inverse resize)")
    if kernel.shape[1] != model.in_chans:
        if model.in_chans == 1:
            kernel = kernel.sum(dim=1, keepdim=True)
            notes.append(f"patch_embed.proj.weight: {shape0[1]} input channels summed to 1")
        else:
            raise ValueError(
                f"checkpoint has {kernel.shape[1]} input channels, model {model.in_chans}"
            )
    out["patch_embed.proj.weight"] = inflate_patch_kernel(kernel, pd, depth_rule)
    notes.append(f"patch_embed.proj.weight: 2D {shape0} inflated to "
                 f"{tuple(out['patch_embed.proj.weight'].shape)} ({depth_rule!r} over {pd} slices)")
    if "patch_embed.proj.bias" in sd:
        out["patch_embed.proj.bias"] = sd.pop("patch_embed.proj.bias")

    # --- tokens and positional embedding
    regs = sd.pop("register_tokens", None)
    if regs is None:
        regs = sd.pop("reg_token", None)
    n_regs = 0 if regs is None else regs.shape[1]
    regs_fit = n_regs == model.num_register_tokens
    if not regs_fit and strict:
        raise ValueError(
            f"checkpoint has {n_regs} register tokens, model {model.num_register_tokens}"
        )
    pos = sd.pop("pos_embed")  # (1, P + h0*w0, E)
    cls = sd.pop("cls_token")
    n_pos = pos.shape[1]
    if old_grid is not None:
        h0, w0 = (int(g) for g in old_grid)
        n_prefix = n_pos - h0 * w0
    else:
        found = next((p for p in (1, 0, 1 + n_regs) if square_side(n_pos - p)), None)
        if found is None:
            raise ValueError(f"cannot infer a square grid from pos_embed {tuple(pos.shape)}; "
                             "pass old_grid=(h0, w0)")
        n_prefix = found
        h0 = w0 = square_side(n_pos - n_prefix) or 0
    if n_prefix not in (0, 1, 1 + n_regs):
        raise ValueError(f"pos_embed {tuple(pos.shape)} does not fit the grid {(h0, w0)}")
    cls_pos = pos[:, :1] if n_prefix >= 1 else torch.zeros_like(pos[:, :1])
    if n_prefix == 1 + n_regs and n_regs:
        regs = regs + pos[:, 1:1 + n_regs]  # type: ignore[operator]
    patch_pos = resample_pos_embed(pos[:, n_prefix:], (1, h0, w0), model.grid_size)
    out["pos_embed"] = torch.cat((cls_pos, patch_pos), dim=1)
    if (h0, w0) != tuple(model.grid_size[1:]) or model.grid_size[0] != 1:
        notes.append(f"pos_embed: 2D grid {(h0, w0)} resampled to {tuple(model.grid_size)}")
    out["cls_token"] = cls
    if regs is not None and regs_fit:
        out["register_tokens"] = regs
    elif regs is not None:
        notes.append(f"register tokens: checkpoint's {n_regs} not used (model has "
                     f"{model.num_register_tokens})")
    if "mask_token" in sd:
        out["mask_token"] = sd.pop("mask_token")
    out.update(sd)  # blocks.*, norm.*: same shapes in 2D and 3D
    return out, notes
