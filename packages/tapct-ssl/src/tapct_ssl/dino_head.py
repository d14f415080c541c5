"""The DINO/iBOT projection head.

Reference: DINOv2, dinov2/layers/dino_head.py; paper Table 7 (3 layers, hidden 2048,
bottleneck 256, 65,536 prototypes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class DINOHead(nn.Module):
    """MLP projection, L2 normalisation and weight-normalised prototypes.

    ``Linear(in_dim, hidden) - GELU - [Linear(hidden, hidden) - GELU] * (nlayers - 2) -
    Linear(hidden, bottleneck)``, then ``x / ||x||``, then a bias-free weight-normalised
    ``Linear(bottleneck, out_dim)`` whose magnitude ``g`` starts at 1 (trainable, as in
    DINOv2). With ``nlayers=1`` the MLP is a single ``Linear(in_dim, bottleneck)``.
    Linear weights use a truncated normal init (std 0.02), biases 0.

    The prototype layer is called ``last_layer`` (the name parameter groups look for to
    freeze it during the first epoch). It uses
    ``torch.nn.utils.parametrizations.weight_norm`` (deep-copyable, not deprecated), so
    its parameters are ``last_layer.parametrizations.weight.original0`` (g, shape (K, 1))
    and ``...original1`` (v, shape (K, bottleneck)); DINOv2 checkpoints with
    ``last_layer.weight_g``/``last_layer.weight_v`` load too (names are mapped).

    Args:
        in_dim: E, width of the backbone output.
        out_dim: K, number of prototypes (paper: 65,536).
        hidden_dim: MLP hidden width (paper: 2048).
        bottleneck_dim: width before the prototypes (paper: 256).
        nlayers: number of MLP linear layers (paper: 3).
        mlp_bias: whether the MLP linear layers have biases (DINOv2: True).

    Raises:
        TypeError: a size is not an int.
        ValueError: a size is < 1.

    Shapes:
        forward: ``(..., E) -> (..., K)``; dtype follows the input (autocast applies).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        in_dim = _check_positive_int("in_dim", in_dim)
        out_dim = _check_positive_int("out_dim", out_dim)
        hidden_dim = _check_positive_int("hidden_dim", hidden_dim)
        bottleneck_dim = _check_positive_int("bottleneck_dim", bottleneck_dim)
        nlayers = _check_positive_int("nlayers", nlayers)
        self.in_dim, self.out_dim = in_dim, out_dim
        if nlayers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim, bias=mlp_bias)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim, bias=mlp_bias), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim, bias=mlp_bias), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=mlp_bias))
        self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        self._register_load_state_dict_pre_hook(self._map_legacy_weight_norm)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @staticmethod
    def _map_legacy_weight_norm(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for old, new in (("weight_g", "original0"), ("weight_v", "original1")):
            key = f"{prefix}last_layer.{old}"
            if key in state_dict:
                state_dict[f"{prefix}last_layer.parametrizations.weight.{new}"] = state_dict.pop(
                    key
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project features onto the prototypes.

        Args:
            x: ``(..., E)`` backbone features (cls or patch tokens).

        Returns:
            ``(..., K)`` prototype logits (unnormalised scores).

        Raises:
            ValueError: the last axis of ``x`` is not ``in_dim``.
        """
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"DINOHead expects last axis {self.in_dim}, got {tuple(x.shape)}")
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)
