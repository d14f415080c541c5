"""Linear segmentation probe on frozen patch features (paper section 3.3.1, Appendix C.1).

One 1x1x1 ``Conv3d`` maps the frozen features ``(B, E, t, h, w)`` to class logits on the
patch grid; the logits are upsampled trilinearly to voxels. Training runs on cached
features with batch size 1 and 4 gradient-accumulation steps (paper C.1); the loss is
MONAI's ``DiceCELoss`` (softmax, one-hot targets), as in kaiko eva's radiology
segmentation configs. With an ``ignore_index`` (255 in many segmentation tools' label
maps), voxels of that value are left out of both loss terms and of the Dice metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from ._windows import as_triple
from .label_checks import bad_label_values
from .metrics import dice_per_class

__all__ = [
    "LinearSegmentationProbe",
    "ProbeTrainingConfig",
    "evaluate_segmentation",
    "predict_segmentation",
    "train_segmentation_probe",
]


class LinearSegmentationProbe(nn.Module):
    """A single 1x1x1 convolution from frozen patch features to segmentation logits.

    Args:
        in_dim: feature width E.
        num_classes: classes including background.
        patch_size: the backbone's ``(pd, ph, pw)``. When given, logits are upsampled by
            exactly the patch size (so patch ``i`` covers voxels ``[i*p, (i+1)*p)``, the
            geometry of :func:`~tapct_eval.extract_features`) and cropped to the output
            size; when None they are resized straight to the output size.

    Raises:
        ValueError: on non-positive sizes.

    Shapes:
        ``forward(features (B, E, t, h, w), output_size=(D, H, W)) -> (B, num_classes, D, H, W)``.
    """

    def __init__(
        self, in_dim: int, num_classes: int, *, patch_size: Sequence[int] | int | None = None
    ) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 2:
            raise ValueError(f"need in_dim >= 1 and num_classes >= 2, got {in_dim}, {num_classes}")
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.patch_size = None if patch_size is None else as_triple(patch_size, "patch_size")
        self.conv = nn.Conv3d(in_dim, num_classes, kernel_size=1)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Uniform init in ``+-1/sqrt(E)`` (PyTorch's Conv default bound), seeded.

        Args:
            generator: CPU generator for reproducible weights.
        """
        bound = self.in_dim**-0.5
        for param in self.conv.parameters():  # weight, then bias
            values = torch.rand(param.shape, generator=generator) * 2 * bound - bound
            param.copy_(values)

    def forward(
        self, features: torch.Tensor, output_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Logits on the patch grid, or upsampled to ``output_size``.

        Args:
            features: ``(B, E, t, h, w)`` float.
            output_size: ``(D, H, W)`` voxel grid of the labels; None keeps the patch grid.

        Returns:
            ``(B, num_classes, D, H, W)`` logits (``(B, num_classes, t, h, w)`` without
            ``output_size``).

        Raises:
            ValueError: when ``features`` is not 5-D with E channels.
        """
        if features.ndim != 5 or features.shape[1] != self.in_dim:
            raise ValueError(
                f"features must be (B, {self.in_dim}, t, h, w), got {tuple(features.shape)}"
            )
        logits = self.conv(features)  # (B, K, t, h, w)
        if output_size is None:
            return logits
        out = tuple(int(s) for s in output_size)
        if self.patch_size is None:
            return F.interpolate(logits, size=out, mode="trilinear", align_corners=False)
        full = tuple(g * p for g, p in zip(logits.shape[2:], self.patch_size))
        if any(f < o for f, o in zip(full, out)):
            raise ValueError(
                f"patch grid {tuple(logits.shape[2:])} x {self.patch_size} < output {out}"
            )
        logits = F.interpolate(logits, size=full, mode="trilinear", align_corners=False)
        return logits[:, :, : out[0], : out[1], : out[2]]


@attrs.frozen
class ProbeTrainingConfig:
    """Training of the linear probe on cached features.

    Attributes:
        steps: optimizer steps.
        accumulation_steps: volumes per optimizer step, one at a time (paper C.1: 4).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    steps: int = 200
    accumulation_steps: int = 4
    lr: float = 1e-2
    weight_decay: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.steps < 1 or self.accumulation_steps < 1:
            raise ValueError(
                f"steps and accumulation_steps must be >= 1, got {self.steps}, "
                f"{self.accumulation_steps}"
            )
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"need lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )


def train_segmentation_probe(
    features: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    num_classes: int,
    *,
    patch_size: Sequence[int] | None = None,
    config: ProbeTrainingConfig = ProbeTrainingConfig(),
    seed: int = 0,
    device: str | torch.device = "cpu",
    ignore_index: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> LinearSegmentationProbe:
    """Train a :class:`LinearSegmentationProbe` on cached frozen features.

    Each micro-batch is one volume (batch size 1); gradients of ``accumulation_steps``
    volumes (loss divided by that number) make one AdamW step. Volumes are visited in a
    seeded random order, reshuffled each pass.

    Args:
        features: per volume ``(E, t, h, w)`` float features.
        labels: per volume ``(D, H, W)`` int labels in ``0..num_classes-1`` (or
            ``ignore_index``).
        num_classes: classes including background.
        patch_size: backbone patch size (see :class:`LinearSegmentationProbe`).
        config: steps, accumulation and optimiser settings.
        seed: seeds the probe initialisation and the visiting order.
        device: where to train.
        ignore_index: label value of voxels left out of the loss (e.g. 255), or None.
        on_step: called with the number of optimizer steps done after each step
            (progress reporting).

    Returns:
        The trained probe (eval mode, on ``device``).

    Raises:
        ValueError: when the lists are empty or of different lengths, or a label holds
            values outside ``0..num_classes-1`` other than ``ignore_index`` (checked
            before training: on a GPU they would end in a device-side assert).
    """
    if not features or len(features) != len(labels):
        raise ValueError(
            f"need as many features as labels (>0), got {len(features)}, {len(labels)}"
        )
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index {ignore_index} is a class id (num_classes {num_classes})")
    for i, y in enumerate(labels):
        bad = bad_label_values(torch.as_tensor(y), num_classes, ignore_index)
        if bad:
            raise ValueError(
                f"labels[{i}] holds values {bad[:8]} outside 0..{num_classes - 1} "
                f"(ignore_index {ignore_index})"
            )
    generator = torch.Generator().manual_seed(seed)
    probe = LinearSegmentationProbe(features[0].shape[0], num_classes, patch_size=patch_size)
    probe.reset_parameters(generator)
    probe.to(device).train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    order: list[int] = []
    for step in range(config.steps):
        opt.zero_grad(set_to_none=True)
        for _ in range(config.accumulation_steps):
            if not order:
                order = torch.randperm(len(features), generator=generator).tolist()
            i = order.pop()
            x = features[i].to(device, torch.float32)[None]  # (1, E, t, h, w)
            y = labels[i].to(device).long()
            logits = probe(x, output_size=y.shape)  # (1, K, D, H, W)
            if ignore_index is not None and bool((y == ignore_index).any()):
                loss = _masked_dice_ce(logits, y, ignore_index) / config.accumulation_steps
            else:
                loss = loss_fn(logits, y[None, None]) / config.accumulation_steps
            loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step + 1)
    return probe.eval()


def _masked_dice_ce(logits: torch.Tensor, y: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``DiceCELoss(to_onehot_y=True, softmax=True)`` over the voxels not ``ignore_index``.

    Ignored voxels are zeroed in both the softmax probabilities and the one-hot target
    (so they add nothing to the Dice sums) and skipped by the cross-entropy mean, which
    gives the value ``DiceCELoss`` would give on the kept voxels alone.

    Args:
        logits: ``(1, K, D, H, W)`` float.
        y: ``(D, H, W)`` int64 labels in ``0..K-1`` or ``ignore_index``.
        ignore_index: the value to leave out.

    Returns:
        Scalar loss (Dice + cross-entropy, each a mean, as MONAI's ``DiceCELoss``).
    """
    keep = (y != ignore_index)[None, None]  # (1, 1, D, H, W)
    target = y.masked_fill(~keep[0, 0], 0)
    probs = torch.softmax(logits, dim=1) * keep
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 0)[None].to(probs.dtype) * keep
    dice = DiceLoss()(probs, onehot)  # MONAI's defaults, as inside DiceCELoss
    ce = F.cross_entropy(logits, y[None], ignore_index=ignore_index)
    return dice + ce


@torch.no_grad()
def predict_segmentation(
    probe: LinearSegmentationProbe, features: torch.Tensor, output_size: Sequence[int]
) -> torch.Tensor:
    """Label map predicted by a probe.

    Args:
        probe: trained probe.
        features: ``(E, t, h, w)`` features of one volume.
        output_size: ``(D, H, W)``.

    Returns:
        ``(D, H, W)`` int64 argmax labels on the CPU.
    """
    device = next(probe.parameters()).device
    logits = probe(features.to(device, torch.float32)[None], output_size=output_size)
    return logits[0].argmax(0).cpu()


def evaluate_segmentation(
    probe: LinearSegmentationProbe,
    features: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    *,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Per-case, per-class Dice of a probe (see :func:`~tapct_eval.dice_per_class`).

    Args:
        probe: trained probe.
        features: per case ``(E, t, h, w)``.
        labels: per case ``(D, H, W)`` int.
        ignore_index: label value of voxels excluded from the Dice (both prediction and
            truth are set to background there, which background-free Dice ignores), or None.

    Returns:
        ``(n_cases, num_classes - 1)`` float32 with NaN for classes absent in both.
    """
    rows = []
    for f, y in zip(features, labels):
        y = y.long()
        pred = predict_segmentation(probe, f, y.shape)
        if ignore_index is not None:
            ignored = y == ignore_index
            y, pred = y.masked_fill(ignored, 0), pred.masked_fill(ignored, 0)
        rows.append(dice_per_class(pred, y, probe.num_classes))
    return torch.stack(rows)
