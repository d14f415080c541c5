"""tapct_ssl: the DINOv2 self-supervised objective, generic over any backbone.

DINO, iBOT and KoLeo losses, the DINO head, the EMA teacher update, cosine schedules,
parameter groups with layer-wise lr decay and the ``DINOv2Objective`` meta-architecture.
The package knows no CT and no ViT: any backbone whose ``forward_features(x, masks)``
returns DINOv2's keys (``x_norm_clstoken``, ``x_norm_patchtokens``) works.

One training step with it::

    values = apply_schedules(optimizer, schedules, it)
    terms = objective(global_crops, local_crops, masks, values.teacher_temp,
                      mask_index=mask_index)          # a DINOv2Terms record
    terms.loss.backward()
    grad_norm = objective.clip_gradients(3.0)          # device tensor, no sync
    optimizer.step()
    objective.update(values.momentum)                  # centers, then EMA

Reference: Oquab et al. 2024, DINOv2 (facebookresearch/dinov2); TAP-CT paper Table 7.
"""

from tapct_ssl.collapse import (
    CollapseStats,
    collapse_stats,
    collapse_warnings,
    effective_rank,
)
from tapct_ssl.cross_entropy import soft_cross_entropy
from tapct_ssl.dino_head import DINOHead
from tapct_ssl.dino_loss import DINOLoss
from tapct_ssl.ema import update_ema
from tapct_ssl.ibot_loss import iBOTPatchLoss
from tapct_ssl.ibot_mask_index import ibot_mask_indices, iBOTMaskIndex
from tapct_ssl.koleo_loss import KoLeoLoss
from tapct_ssl.objective import (
    CENTERING_MODES,
    LOSS_KEYS,
    DINOv2Objective,
    DINOv2ObjectiveConfig,
    DINOv2Terms,
    dino_crop_terms,
)
from tapct_ssl.optim import (
    OptimConfig,
    Schedules,
    ScheduleValues,
    apply_schedules,
    build_optimizer,
    build_schedulers,
)
from tapct_ssl.param_groups import get_params_groups
from tapct_ssl.scheduler import CosineScheduler

__all__ = [
    "CENTERING_MODES",
    "LOSS_KEYS",
    "CollapseStats",
    "CosineScheduler",
    "DINOHead",
    "DINOLoss",
    "DINOv2Objective",
    "DINOv2ObjectiveConfig",
    "DINOv2Terms",
    "KoLeoLoss",
    "OptimConfig",
    "ScheduleValues",
    "Schedules",
    "apply_schedules",
    "build_optimizer",
    "build_schedulers",
    "collapse_stats",
    "collapse_warnings",
    "dino_crop_terms",
    "effective_rank",
    "get_params_groups",
    "iBOTMaskIndex",
    "iBOTPatchLoss",
    "ibot_mask_indices",
    "soft_cross_entropy",
    "update_ema",
]
