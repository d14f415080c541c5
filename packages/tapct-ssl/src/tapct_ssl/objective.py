"""The DINOv2 meta-architecture: student, EMA teacher, untied heads and the three losses.

Reference: Oquab et al. 2024 (DINOv2); DINOv2, dinov2/train/ssl_meta_arch.py; paper
(TAP-CT) Table 7 for the defaults. Generic: any backbone whose ``forward_features(x,
masks=None)`` returns DINOv2's keys works; nothing here knows about CT or a ViT.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn
from torch.profiler import record_function

from tapct_ssl.collapse import CollapseStats, collapse_stats
from tapct_ssl.dino_head import DINOHead
from tapct_ssl.dino_loss import DINOLoss
from tapct_ssl.ema import update_ema
from tapct_ssl.ibot_loss import iBOTPatchLoss
from tapct_ssl.ibot_mask_index import ibot_mask_indices, iBOTMaskIndex
from tapct_ssl.koleo_loss import KoLeoLoss

#: Teacher-target modes: DINO's centering (the paper's choice) or Sinkhorn-Knopp.
CENTERING_MODES: tuple[str, ...] = ("centering", "sinkhorn_knopp")


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _bool(instance: object, attribute: attrs.Attribute, value: bool) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be true or false, got {value!r}")


def _momentum(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value}")


def _centering(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in CENTERING_MODES:
        raise ValueError(f"{attribute.name} must be one of {CENTERING_MODES}, got {value!r}")


@attrs.frozen(kw_only=True)
class DINOv2ObjectiveConfig:
    """Settings of ``DINOv2Objective``; defaults are the paper's (Table 7) and DINOv2's.

    Attributes:
        dino_loss_weight: weight of the DINO term (1.0).
        ibot_loss_weight: weight of the iBOT term (1.0).
        koleo_loss_weight: weight of the KoLeo term (0.1).
        dino_head_n_prototypes, dino_head_hidden_dim, dino_head_bottleneck_dim,
            dino_head_nlayers: DINO head (65536, 2048, 256, 3).
        ibot_head_n_prototypes, ibot_head_hidden_dim, ibot_head_bottleneck_dim,
            ibot_head_nlayers: the separate (untied) iBOT head (65536, 2048, 256, 3).
        dino_head_mlp_bias, ibot_head_mlp_bias: biases in the heads' MLP layers
            (``DINOHead(mlp_bias=...)``; DINOv2: True).
        student_temp: student temperature (0.1).
        center_momentum: EMA momentum of both centers (0.9).
        centering: ``"centering"`` (paper: "Centering (No SK)") or ``"sinkhorn_knopp"``.
        sinkhorn_iterations: Sinkhorn-Knopp rounds (3).
        n_global_crops: global crops per image (2).

    Raises:
        ValueError: a value out of range, named in the message.
    """

    dino_loss_weight: float = attrs.field(default=1.0, validator=_non_negative)
    ibot_loss_weight: float = attrs.field(default=1.0, validator=_non_negative)
    koleo_loss_weight: float = attrs.field(default=0.1, validator=_non_negative)
    dino_head_n_prototypes: int = attrs.field(default=65536, validator=_positive)
    dino_head_hidden_dim: int = attrs.field(default=2048, validator=_positive)
    dino_head_bottleneck_dim: int = attrs.field(default=256, validator=_positive)
    dino_head_nlayers: int = attrs.field(default=3, validator=_positive)
    ibot_head_n_prototypes: int = attrs.field(default=65536, validator=_positive)
    ibot_head_hidden_dim: int = attrs.field(default=2048, validator=_positive)
    ibot_head_bottleneck_dim: int = attrs.field(default=256, validator=_positive)
    ibot_head_nlayers: int = attrs.field(default=3, validator=_positive)
    dino_head_mlp_bias: bool = attrs.field(default=True, validator=_bool)
    ibot_head_mlp_bias: bool = attrs.field(default=True, validator=_bool)
    student_temp: float = attrs.field(default=0.1, validator=_positive)
    center_momentum: float = attrs.field(default=0.9, validator=_momentum)
    centering: str = attrs.field(default="centering", validator=_centering)
    sinkhorn_iterations: int = attrs.field(default=3, validator=_positive)
    n_global_crops: int = attrs.field(default=2, validator=_positive)


@attrs.frozen
class DINOv2Terms:
    """The terms of one ``DINOv2Objective.forward``: a frozen record of scalar tensors.

    ``loss`` (with its graph) is the weighted total that the step backpropagates; the
    other fields are the unweighted terms, detached. Iterating yields ``(name, tensor)``
    pairs in field order, so a logger writes every term without a list of names of its
    own (a new term is a new field here and is logged everywhere at once).

    The collapse monitors and the teacher's cls tokens ride along outside the iteration
    (they are not loss terms): ``monitors`` (:class:`~tapct_ssl.collapse.CollapseStats`)
    and ``teacher_cls``.

    Attributes:
        loss: ``dino_w * (dino_local + dino_global) + ibot_w * ibot + koleo_w * koleo``.
        dino_local_crops_loss: DINO term of the local-global pairs (normalised by the
            number of pairs).
        dino_global_crops_loss: DINO term of the global-global pairs.
        koleo_loss: KoLeo term (summed over global crops).
        ibot_loss: iBOT masked-token term.
        monitors: The step's collapse monitors (device scalars), or None.
        teacher_cls: ``(n_g B, E)`` the teacher backbone's cls tokens (detached), for
            statistics that need the whole batch (``tapct_ssl.effective_rank``), or None.

    Example:
        >>> for name, value in terms:  # doctest: +SKIP
        ...     log[name] = value
    """

    loss: torch.Tensor
    dino_local_crops_loss: torch.Tensor
    dino_global_crops_loss: torch.Tensor
    koleo_loss: torch.Tensor
    ibot_loss: torch.Tensor
    monitors: CollapseStats | None = None
    teacher_cls: torch.Tensor | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The loss-term field names, ``loss`` first (the one list of term names)."""
        return tuple(f.name for f in attrs.fields(cls) if f.name not in _NOT_TERMS)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for every field, in order."""
        for name in self.names():
            yield name, getattr(self, name)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Same as iterating the record (``dict``-like spelling)."""
        return iter(self)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` of every field."""
        return dict(self)

    def detached(self) -> DINOv2Terms:
        """The record with ``loss`` detached too (for logging or accumulation)."""
        detached: dict[str, Any] = {k: v.detach() for k, v in self}
        return attrs.evolve(self, **detached)


_NOT_TERMS = frozenset({"monitors", "teacher_cls"})


#: Names of the terms, ``loss`` first: ``DINOv2Terms.names()`` (kept for old imports).
LOSS_KEYS: tuple[str, ...] = DINOv2Terms.names()


def dino_crop_terms(
    dino_loss: DINOLoss,
    student_global_views: Sequence[torch.Tensor],
    student_local_views: Sequence[torch.Tensor],
    teacher_global_views: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO terms of a multi-crop step, normalised by the number of view pairs.

    Every student view is matched with every teacher (global) view except its own view:
    ``n_g * n_l`` local-global pairs plus ``n_g * (n_g - 1)`` global-global pairs (with
    2 global + 8 local crops: 16 + 2 = 18). Both terms are divided by that total, so
    ``local + global`` is the mean cross-entropy over pairs; for 2 global crops the
    global pairs are DINOv2's swapped teacher outputs (student crop A vs teacher crop B)
    and the result equals DINOv2's ``dino_local_crops_loss`` and
    ``dino_global_crops_loss`` (its factor 2 on the global term is the 2 pairs).

    Args:
        dino_loss: supplies the pairwise cross-entropy.
        student_global_views: ``n_g`` tensors ``(B, K)`` of student logits, crop order.
        student_local_views: ``n_l`` tensors ``(B, K)`` (may be empty).
        teacher_global_views: ``n_g`` tensors ``(B, K)`` of teacher targets, crop order.

    Returns:
        ``(dino_local_crops_loss, dino_global_crops_loss)`` scalars.

    Raises:
        ValueError: the view counts differ or give no pair at all.
    """
    n_g, n_l = len(teacher_global_views), len(student_local_views)
    if len(student_global_views) != n_g:
        raise ValueError(
            f"{len(student_global_views)} student global views for {n_g} teacher views"
        )
    n_terms = n_g * (n_g - 1) + n_g * n_l
    if n_terms == 0:
        raise ValueError("the DINO loss needs 2 global crops or at least 1 local crop")
    reference = teacher_global_views[0]
    zero = reference.new_zeros((), dtype=torch.promote_types(reference.dtype, torch.float32))
    local = dino_loss(student_local_views, teacher_global_views) / n_terms if n_l else zero
    global_terms = [
        dino_loss(
            [student_global_views[i]], [t for j, t in enumerate(teacher_global_views) if j != i]
        )
        for i in range(n_g)
        if n_g > 1
    ]
    glob = torch.stack(global_terms).sum() / n_terms if global_terms else zero
    return local, glob


class DINOv2Objective(nn.Module):
    """DINOv2 self-supervised objective around any backbone.

    Organisation of one ``forward`` (DINOv2's ``forward_backward`` without the backward):

    1. Teacher (``torch.no_grad``, eval mode, so drop path is off): backbone on the
       unmasked global crops; DINO head on the cls tokens, iBOT head only on the patch
       tokens the student will see masked (``mask_index.indices``). Targets by centering
       (``softmax((z - c) / teacher_temp)``) or Sinkhorn-Knopp, in float32. In training
       mode the teacher logits are recorded for the next center update.
    2. Student: backbone on the masked global crops and on the local crops, in one
       ``forward_features_list`` call when the backbone offers it (crops of different
       sizes); DINO head once on all cls tokens, iBOT head only on the masked patch
       tokens.
    3. Losses (float32 inside autocast):

       * DINO: cross-entropy over every (student view, teacher view) pair that is not
         the same view, divided by the number of pairs (``dino_crop_terms``; 18 for
         2 + 8 crops). Teacher views are the global crops only; student global crop A is
         matched with teacher crop B (DINOv2's swap).
       * iBOT: ``iBOTPatchLoss.forward_masked`` with the batch's ``iBOTMaskIndex``.
         With no masked patch it is 0, computed as ``0 * ibot_head(...)`` so the head
         stays in the graph (DDP needs every trainable parameter used).
       * KoLeo on the student backbone cls tokens, per global crop, summed over the
         global crops (as DINOv2; with weight 0.1).

       ``loss = dino_w * (dino_local + dino_global) + ibot_w * ibot + koleo_w * koleo``.

    ``update(momentum)`` after each ``optimizer.step()`` applies the pending center
    updates (all-reduced under torch.distributed) and the EMA. Centers and teacher change
    only there, so with centering, accumulating gradients of ``loss / k`` over k
    micro-batches equals one k-times larger batch (KoLeo and Sinkhorn-Knopp excepted:
    they are batch statistics, per process in DINOv2 too). Wrap the whole objective in
    DDP; call ``ddp.module.update(m)``.

    Args:
        backbone: the student backbone: ``forward_features(x, masks=None) -> dict`` with
            ``x_norm_clstoken (B, E)`` and ``x_norm_patchtokens (B, N, E)``; optionally
            ``forward_features_list(xs, masks_list) -> list[dict]``. Its mask token must
            stay in the graph when ``masks`` has no True (DDP).
        config: the settings (paper defaults).
        embed_dim: E; default ``backbone.embed_dim``.
        teacher_backbone: a separately built teacher backbone (e.g. one that cannot be
            deep-copied); it is loaded with the student's weights (strict). Default: a
            deep copy of ``backbone``.

    Raises:
        TypeError: ``config`` is not a ``DINOv2ObjectiveConfig``.
        ValueError: ``embed_dim`` not given and ``backbone`` has no ``embed_dim``.

    Attributes:
        student: ``nn.ModuleDict`` with ``backbone``, ``dino_head``, ``ibot_head``.
        teacher: the same keys; ``requires_grad`` False, always in eval mode.
        dino_loss: ``DINOLoss`` (holds the DINO center).
        ibot_patch_loss: ``iBOTPatchLoss`` (holds the patch center).
        koleo_loss: ``KoLeoLoss``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        config: DINOv2ObjectiveConfig | None = None,
        embed_dim: int | None = None,
        teacher_backbone: nn.Module | None = None,
    ) -> None:
        super().__init__()
        config = DINOv2ObjectiveConfig() if config is None else config
        if not isinstance(config, DINOv2ObjectiveConfig):
            raise TypeError(f"config must be a DINOv2ObjectiveConfig, got {type(config)}")
        if embed_dim is None:
            embed_dim = getattr(backbone, "embed_dim", None)
            if not isinstance(embed_dim, int):
                raise ValueError(
                    f"backbone {type(backbone).__name__} has no int embed_dim; pass embed_dim"
                )
        self.config = config
        self.embed_dim = embed_dim
        dino_head = DINOHead(
            embed_dim,
            config.dino_head_n_prototypes,
            config.dino_head_hidden_dim,
            config.dino_head_bottleneck_dim,
            config.dino_head_nlayers,
            mlp_bias=config.dino_head_mlp_bias,
        )
        ibot_head = DINOHead(
            embed_dim,
            config.ibot_head_n_prototypes,
            config.ibot_head_hidden_dim,
            config.ibot_head_bottleneck_dim,
            config.ibot_head_nlayers,
            mlp_bias=config.ibot_head_mlp_bias,
        )
        first = next(backbone.parameters(), None)
        if first is not None:
            dino_head.to(device=first.device)
            ibot_head.to(device=first.device)
        self.student = nn.ModuleDict(
            {"backbone": backbone, "dino_head": dino_head, "ibot_head": ibot_head}
        )
        if teacher_backbone is None:
            teacher_backbone = copy.deepcopy(backbone)
        else:
            teacher_backbone.load_state_dict(backbone.state_dict(), strict=True)
        self.teacher = nn.ModuleDict(
            {
                "backbone": teacher_backbone,
                "dino_head": copy.deepcopy(dino_head),
                "ibot_head": copy.deepcopy(ibot_head),
            }
        )
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.dino_loss = DINOLoss(
            config.dino_head_n_prototypes, config.student_temp, config.center_momentum
        )
        self.ibot_patch_loss = iBOTPatchLoss(
            config.ibot_head_n_prototypes, config.student_temp, config.center_momentum
        )
        self.koleo_loss = KoLeoLoss()
        if first is not None:
            self.dino_loss.to(device=first.device)
            self.ibot_patch_loss.to(device=first.device)

    def train(self, mode: bool = True) -> DINOv2Objective:
        """Set the student's mode; the teacher always stays in eval mode.

        Args:
            mode: training (True) or evaluation (False).

        Returns:
            ``self``.
        """
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------ accessors
    @property
    def student_backbone(self) -> nn.Module:
        """The student backbone (trained by the optimizer)."""
        return self.student["backbone"]

    @property
    def teacher_backbone(self) -> nn.Module:
        """The EMA teacher backbone (what is exported after pretraining)."""
        return self.teacher["backbone"]

    def student_parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters (backbone and both heads): what the optimizer trains."""
        return self.student.parameters()

    @torch.no_grad()
    def clip_gradients(self, max_norm: float | None) -> torch.Tensor:
        """Clip each student part's gradient norm separately, as DINOv2, without a sync.

        DINOv2 (``SSLMetaArch`` / train.py) clips the backbone, the DINO head and the iBOT
        head each to ``max_norm``. The norms stay on the device (no ``float()``), so a
        caller can check them for NaN/inf at its next host fetch.

        Args:
            max_norm: the largest gradient norm per part (paper: 3.0); ``None`` or
                ``inf`` measures without clipping.

        Returns:
            0-d float32 tensor on the parameters' device: the largest pre-clip norm of the
            three parts (0 when no gradient exists); NaN/inf when a gradient is not finite.
        """
        limit = float("inf") if max_norm is None else float(max_norm)
        norms = []
        for part in self.student.values():
            grads = [p for p in part.parameters() if p.grad is not None]
            if grads:
                norms.append(torch.nn.utils.clip_grad_norm_(grads, limit, foreach=True).float())
        if not norms:
            first = next(self.student.parameters())
            return torch.zeros((), device=first.device)
        return torch.stack(norms).amax()

    def state_for_checkpoint(self) -> dict[str, dict[str, torch.Tensor]]:
        """The objective's state as plain tensors, split by role.

        Returns:
            ``{"student": ..., "teacher": ..., "objective_state": ...}``: the student's and
            the teacher's state dicts (keys ``backbone.*``, ``dino_head.*``,
            ``ibot_head.*``) and the rest (the DINO and iBOT centers). Loadable with
            ``torch.load(..., weights_only=True)``; read back by
            :meth:`load_checkpoint_state`.
        """
        rest = {
            k: v for k, v in self.state_dict().items() if not k.startswith(("student.", "teacher."))
        }
        return {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "objective_state": rest,
        }

    def load_checkpoint_state(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Restore what :meth:`state_for_checkpoint` returned (strict: every key must match).

        Args:
            state: a mapping with ``student``, ``teacher`` and (optionally)
                ``objective_state``; other keys are ignored.

        Raises:
            KeyError: ``student`` or ``teacher`` is missing.
            RuntimeError: missing or unexpected parameter keys (PyTorch's message).
        """
        full = {f"student.{k}": v for k, v in state["student"].items()}
        full.update({f"teacher.{k}": v for k, v in state["teacher"].items()})
        full.update(state.get("objective_state", {}))
        self.load_state_dict(full, strict=True)

    # ------------------------------------------------------------------ inputs
    def _check_inputs(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None,
        masks: torch.Tensor,
        mask_index: iBOTMaskIndex | None,
    ) -> tuple[torch.Tensor | None, iBOTMaskIndex]:
        n_g = self.config.n_global_crops
        if global_crops.shape[0] == 0 or global_crops.shape[0] % n_g:
            raise ValueError(
                f"global_crops has {global_crops.shape[0]} crops, not a positive multiple of "
                f"n_global_crops={n_g}"
            )
        n_images = global_crops.shape[0] // n_g
        if local_crops is not None and local_crops.shape[0] == 0:
            local_crops = None
        if local_crops is not None and local_crops.shape[0] % n_images:
            raise ValueError(
                f"local_crops has {local_crops.shape[0]} crops, not a multiple of the batch "
                f"size {n_images}"
            )
        if masks.dtype != torch.bool or masks.ndim != 2 or masks.shape[0] != global_crops.shape[0]:
            raise ValueError(
                f"masks must be bool ({global_crops.shape[0]}, N), got {masks.dtype} "
                f"{tuple(masks.shape)}"
            )
        if mask_index is None:
            mask_index = ibot_mask_indices(masks)
        elif mask_index.n_images != masks.shape[0] or (
            mask_index.weights.shape != mask_index.indices.shape
        ):
            raise ValueError(
                f"mask_index is for {mask_index.n_images} images with "
                f"{tuple(mask_index.indices.shape)} indices and "
                f"{tuple(mask_index.weights.shape)} weights; masks has {masks.shape[0]} images"
            )
        device = masks.device
        if mask_index.indices.device != device:
            mask_index = mask_index.to(device, non_blocking=True)
        return local_crops, mask_index

    # ----------------------------------------------------------------------- teacher
    @torch.no_grad()
    def _teacher_targets(
        self, global_crops: torch.Tensor, mask_indices: torch.Tensor, teacher_temp: float
    ) -> tuple[list[torch.Tensor], torch.Tensor, CollapseStats, torch.Tensor]:
        with record_function("tapct_ssl.teacher.backbone"):
            teacher_backbone: Any = self.teacher["backbone"]
            out = teacher_backbone.forward_features(global_crops)
        cls_tokens = out["x_norm_clstoken"]  # (n_g B, E)
        patch_tokens = out["x_norm_patchtokens"]  # (n_g B, N, E)
        masked = patch_tokens.flatten(0, 1).index_select(0, mask_indices)  # (M, E)
        with record_function("tapct_ssl.teacher.heads"):
            cls_logits = self.teacher["dino_head"](cls_tokens)  # (n_g B, K)
            patch_logits = self.teacher["ibot_head"](masked)  # (M, K')
        with record_function("tapct_ssl.teacher.targets"):
            dino_targets, ibot_targets = self._targets(cls_logits, patch_logits, teacher_temp)
        monitors = collapse_stats(
            torch.cat(dino_targets), cls_logits, teacher_temp, cls_tokens
        )
        return dino_targets, ibot_targets, monitors, cls_tokens.detach()

    @torch.no_grad()
    def _targets(
        self, cls_logits: torch.Tensor, patch_logits: torch.Tensor, teacher_temp: float
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        if self.config.centering == "centering":
            dino_targets = self.dino_loss.softmax_center_teacher(cls_logits, teacher_temp)
            ibot_targets = self.ibot_patch_loss.softmax_center_teacher(patch_logits, teacher_temp)
            if self.training:
                self.dino_loss.update_center(cls_logits)
                self.ibot_patch_loss.update_center(patch_logits)
        else:
            n_iter = self.config.sinkhorn_iterations
            dino_targets = self.dino_loss.sinkhorn_knopp_teacher(
                cls_logits, teacher_temp, n_iterations=n_iter
            )
            n_masked = torch.tensor(float(patch_logits.shape[0]), device=patch_logits.device)
            ibot_targets = self.ibot_patch_loss.sinkhorn_knopp_teacher(
                patch_logits, teacher_temp, n_masked_patches_tensor=n_masked, n_iterations=n_iter
            )
        return list(dino_targets.chunk(self.config.n_global_crops)), ibot_targets

    # ----------------------------------------------------------------------- student
    def _student_features(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor | None, masks: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        backbone: Any = self.student["backbone"]
        if local_crops is None:
            return backbone.forward_features(global_crops, masks=masks), None
        if hasattr(backbone, "forward_features_list"):
            global_out, local_out = backbone.forward_features_list(
                [global_crops, local_crops], [masks, None]
            )
            return global_out, local_out
        return backbone.forward_features(global_crops, masks=masks), backbone.forward_features(
            local_crops
        )

    def forward(
        self,
        global_crops: torch.Tensor,
        local_crops: torch.Tensor | None,
        masks: torch.Tensor,
        teacher_temp: float,
        *,
        mask_index: iBOTMaskIndex | None = None,
    ) -> DINOv2Terms:
        """Compute the DINOv2 losses of one (micro-)batch.

        Args:
            global_crops: ``(n_g B, C, D, H, W)`` crop-major (every image's crop 0, then
                every image's crop 1), as DINOv2's collate.
            local_crops: ``(n_l B, C, d, h, w)`` crop-major, or None / empty.
            masks: ``(n_g B, N)`` bool iBOT masks of the global crops (True = the student
                sees the mask token).
            teacher_temp: teacher temperature for this iteration (> 0).
            mask_index: the masks' :func:`~tapct_ssl.ibot_mask_indices`, computed where
                the masks were drawn (DataLoader worker) so the step needs no
                ``nonzero`` (a device sync); computed here when None. Moved to the
                masks' device if needed.

        Returns:
            The :class:`DINOv2Terms`: ``loss`` (scalar, with graph) is the weighted
            total; the others are the unweighted terms, detached.

        Raises:
            ValueError: inconsistent shapes or ``teacher_temp <= 0``.
        """
        if not float(teacher_temp) > 0:
            raise ValueError(f"teacher_temp must be > 0, got {teacher_temp}")
        local_crops, mask_index = self._check_inputs(global_crops, local_crops, masks, mask_index)
        mask_indices = mask_index.indices
        n_g = self.config.n_global_crops
        n_images = global_crops.shape[0] // n_g
        n_local = 0 if local_crops is None else local_crops.shape[0] // n_images

        teacher_views, ibot_targets, monitors, teacher_cls = self._teacher_targets(
            global_crops, mask_indices, float(teacher_temp)
        )

        with record_function("tapct_ssl.student.backbone"):
            global_out, local_out = self._student_features(global_crops, local_crops, masks)
        global_cls = global_out["x_norm_clstoken"]  # (n_g B, E)
        patch_tokens = global_out["x_norm_patchtokens"]  # (n_g B, N, E)
        if patch_tokens.shape[1] != masks.shape[1]:
            raise ValueError(
                f"masks has {masks.shape[1]} tokens per crop, the backbone returned "
                f"{patch_tokens.shape[1]} patch tokens"
            )
        cls_tokens = global_cls
        if local_out is not None:
            cls_tokens = torch.cat([global_cls, local_out["x_norm_clstoken"]])  # ((n_g+n_l) B, E)
        n_masked = mask_index.n_masked
        with record_function("tapct_ssl.student.heads"):
            dino_logits = self.student["dino_head"](cls_tokens)  # ((n_g+n_l) B, K)
            if n_masked > 0:
                masked = patch_tokens.flatten(0, 1).index_select(0, mask_indices)  # (M, E)
                ibot_logits = self.student["ibot_head"](masked)  # (M, K')
            else:  # keep the iBOT head in the graph with a zero contribution (DDP)
                ibot_logits = self.student["ibot_head"](patch_tokens[:1, 0])  # (1, K')

        with record_function("tapct_ssl.losses"):
            global_logits = dino_logits[: n_g * n_images]
            local_logits = dino_logits[n_g * n_images :]
            dino_local, dino_global = dino_crop_terms(
                self.dino_loss,
                list(global_logits.chunk(n_g)),
                list(local_logits.chunk(n_local)) if n_local else [],
                teacher_views,
            )
            if n_masked > 0:
                ibot = self.ibot_patch_loss.forward_masked(ibot_logits, ibot_targets, mask_index)
            else:
                ibot = ibot_logits.float().sum() * 0.0
            koleo = torch.stack([self.koleo_loss(c) for c in global_cls.chunk(n_g)]).sum()

        cfg = self.config
        loss = (
            cfg.dino_loss_weight * (dino_local + dino_global)
            + cfg.ibot_loss_weight * ibot
            + cfg.koleo_loss_weight * koleo
        )
        return DINOv2Terms(
            loss=loss,
            dino_local_crops_loss=dino_local.detach(),
            dino_global_crops_loss=dino_global.detach(),
            koleo_loss=koleo.detach(),
            ibot_loss=ibot.detach(),
            monitors=monitors,
            teacher_cls=teacher_cls,
        )

    @torch.no_grad()
    def update(self, momentum: float, skip: torch.Tensor | None = None) -> None:
        """Once per optimizer step, after ``optimizer.step()``: centers, then EMA.

        Applies the pending DINO and iBOT center updates (mean of every teacher output
        since the last call, all-reduced under torch.distributed), then
        ``teacher <- momentum * teacher + (1 - momentum) * student`` on backbone and heads.

        Args:
            momentum: teacher EMA momentum in [0, 1] (paper: cosine 0.992 -> 1.0).
            skip: optional 0-dim bool tensor on the objective's device; where True the
                centers and the teacher stay exactly as they are (the step's loss or
                gradient was not finite), decided on the device without a host sync,
                as fused AdamW's ``found_inf`` skips its update.

        Raises:
            ValueError: momentum outside [0, 1].
        """
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.dino_loss.apply_center_update(skip)
        self.ibot_patch_loss.apply_center_update(skip)
        update_ema(self.teacher, self.student, float(momentum), skip=skip)
