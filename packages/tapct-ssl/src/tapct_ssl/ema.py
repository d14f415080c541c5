"""Exponential moving average of parameters (the DINO teacher update).

Reference: DINOv2, dinov2/train/ssl_meta_arch.py (``update_teacher``).
"""

from __future__ import annotations

import torch
from torch import nn

from tapct_ssl._names import strip_wrapper_prefixes


def _named(module: nn.Module) -> dict[str, torch.Tensor]:
    named: dict[str, torch.Tensor] = {}
    for raw, param in module.named_parameters():
        name = strip_wrapper_prefixes(raw)
        if name in named:
            raise ValueError(f"two parameters map to the name {name!r} ({raw!r})")
        named[name] = param
    return named


@torch.no_grad()
def update_ema(
    teacher: nn.Module,
    student: nn.Module,
    momentum: float,
    skip: torch.Tensor | None = None,
) -> None:
    """In place ``teacher <- momentum * teacher + (1 - momentum) * student``.

    Parameters are matched by name (wrapper prefixes such as ``module.`` and
    ``_orig_mod.`` ignored), so a DDP- or compile-wrapped student works with a bare
    teacher. Uses foreach kernels (one launch per dtype/device group). ``momentum=0``
    copies the student exactly; ``momentum=1`` leaves the teacher untouched. Buffers are
    not averaged (as in DINOv2).

    Args:
        teacher: module updated in place.
        student: module with the same parameter names and shapes.
        momentum: in [0, 1] (paper: cosine 0.992 -> 1.0).
        skip: optional 0-dim bool tensor on the parameters' device: where True the
            teacher is left exactly as it is, decided on the device without a host sync
            (a training step whose loss or gradient was not finite, as fused AdamW's
            ``found_inf``). The update is then one ``lerp`` towards the student.

    Raises:
        ValueError: momentum outside [0, 1], or parameter names/shapes that differ.
    """
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_named, s_named = _named(teacher), _named(student)
    if t_named.keys() != s_named.keys():
        missing = sorted(set(s_named) ^ set(t_named))[:5]
        raise ValueError(f"teacher and student parameters differ, e.g. {missing}")
    names = list(t_named)
    t_params = [t_named[n] for n in names]
    s_params = [s_named[n].detach() for n in names]
    for n, t, s in zip(names, t_params, s_params):
        if t.shape != s.shape:
            raise ValueError(f"{n}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}")
    if not t_params or momentum == 1.0:
        return
    if skip is not None:
        weight = torch.where(skip, 0.0, 1.0 - momentum).to(t_params[0].dtype)  # ()
        torch._foreach_lerp_(t_params, s_params, [weight] * len(t_params))
        return
    if momentum == 0.0:
        torch._foreach_copy_(t_params, s_params)
        return
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
