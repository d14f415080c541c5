"""tapct_ssl: the DINOv2 self-supervised objective, generic over any backbone.

DINO, iBOT and KoLeo losses, the DINO head, the EMA teacher update, cosine schedules,
parameter groups with layer-wise lr decay and the ``DINOv2Objective`` meta-architecture.
The package knows no CT and no ViT: any backbone whose ``forward_features(x, masks)``
returns DINOv2's keys (``x_norm_clstoken``, ``x_norm_patchtokens``) works.

Reference: Oquab et al. 2024, DINOv2 (facebookresearch/dinov2); TAP-CT paper Table 7.
"""

from tapct_ssl.dino_head import DINOHead
from tapct_ssl.dino_loss import DINOLoss
from tapct_ssl.ema import update_ema
from tapct_ssl.ibot_loss import iBOTPatchLoss
from tapct_ssl.koleo_loss import KoLeoLoss
from tapct_ssl.objective import (
    CENTERING_MODES,
    LOSS_KEYS,
    DINOv2Objective,
    DINOv2ObjectiveConfig,
    dino_crop_terms,
)
from tapct_ssl.optim import OptimConfig, Schedules, build_schedulers
from tapct_ssl.param_groups import get_params_groups
from tapct_ssl.scheduler import CosineScheduler

__all__ = [
    "CENTERING_MODES",
    "LOSS_KEYS",
    "CosineScheduler",
    "DINOHead",
    "DINOLoss",
    "DINOv2Objective",
    "DINOv2ObjectiveConfig",
    "KoLeoLoss",
    "OptimConfig",
    "Schedules",
    "build_schedulers",
    "dino_crop_terms",
    "get_params_groups",
    "iBOTPatchLoss",
    "update_ema",
]
