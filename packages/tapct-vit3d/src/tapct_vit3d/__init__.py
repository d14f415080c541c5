"""tapct_vit3d: the 3D Vision Transformer of TAP-CT, DINOv2-compatible.

Public API:

- :class:`VisionTransformer3d`: the backbone (DINOv2 names and outputs, 3D patches).
- :func:`create_model`, :func:`list_models`, :func:`preset_config`, :data:`PRESETS`:
  paper presets (TAP-CT Table 3) and small CPU ones.
- :func:`resample_pos_embed`: resample a positional embedding between ``(t, h, w)`` grids.
- :func:`save_pretrained`, :func:`load_pretrained`, :func:`convert_dinov2_checkpoint`,
  :func:`read_model_metadata`: safetensors + JSON weights (extra metadata in
  config.json), DINOv2-style checkpoints (released TAP-CT weights).
- :func:`inflate_2d_state_dict`, :func:`inflate_patch_kernel`: start from 2D DINOv2/timm.
- :class:`PatchEmbed3d`, :func:`patch_grid`, :class:`Block`: building blocks.
- :func:`activation_bytes_per_sample`, :func:`saved_tensor_bytes`: activation memory kept
  for backward (CPU, no compute), for any preset and crops.
"""

from .activation_memory import activation_bytes_per_sample, saved_tensor_bytes
from .block import Block
from .hub import (
    KNOWN_RELEASES,
    METADATA_KEY,
    convert_dinov2_checkpoint,
    load_pretrained,
    read_model_metadata,
    save_pretrained,
)
from .inflate import inflate_2d_state_dict, inflate_patch_kernel
from .patch_embed import PatchEmbed3d, patch_grid
from .pos_embed import resample_pos_embed
from .presets import PRESETS, create_model, list_models, preset_config
from .vision_transformer import VisionTransformer3d

__all__ = [
    "KNOWN_RELEASES",
    "METADATA_KEY",
    "PRESETS",
    "Block",
    "PatchEmbed3d",
    "VisionTransformer3d",
    "activation_bytes_per_sample",
    "convert_dinov2_checkpoint",
    "create_model",
    "inflate_2d_state_dict",
    "inflate_patch_kernel",
    "list_models",
    "load_pretrained",
    "patch_grid",
    "preset_config",
    "read_model_metadata",
    "resample_pos_embed",
    "save_pretrained",
    "saved_tensor_bytes",
]
