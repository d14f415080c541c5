"""tapct_vit3d: the 3D Vision Transformer of TAP-CT, DINOv2-compatible.

Public API:

- :class:`VisionTransformer3d`: the backbone (DINOv2 names and outputs, 3D patches).
- :func:`create_model`, :func:`list_models`, :func:`preset_config`, :data:`PRESETS`:
  paper presets (TAP-CT Table 3) and small CPU ones.
- :func:`resample_pos_embed`: resample a positional embedding between ``(t, h, w)`` grids.
- :func:`save_pretrained`, :func:`load_pretrained`, :func:`convert_dinov2_checkpoint`,
  :func:`read_model_metadata`, :func:`write_model_card`: safetensors + JSON weights
  (extra metadata in config.json), a Hugging Face model card, DINOv2-style checkpoints
  (released TAP-CT weights), hub ids from the cache or the hub.
- :func:`load_weights`, :class:`LoadReport`, :func:`read_state_dict`, :func:`find_prefix`:
  load any supported checkpoint into a model (prefix detected by name, 2D inflated,
  resampled) and report loaded, new and unused names.
- :func:`inflate_2d_state_dict`, :func:`inflate_patch_kernel`, :func:`resample_patch_embed`:
  start from 2D DINOv2/timm (FlexiViT patch-kernel resize).
- :class:`PatchEmbed3d`, :func:`patch_grid`, :class:`Block`: building blocks.
- :func:`activation_bytes_per_sample`, :func:`saved_tensor_bytes`: activation memory kept
  for backward (CPU, no compute), for any preset and crops.
"""

from ._state_dict import LoadReport, find_prefix
from .activation_memory import activation_bytes_per_sample, saved_tensor_bytes
from .block import Block
from .factory import create_model, load_pretrained
from .hub import (
    KNOWN_RELEASES,
    METADATA_KEY,
    convert_dinov2_checkpoint,
    is_hub_id,
    load_weights,
    read_model_metadata,
    read_state_dict,
    save_pretrained,
    write_model_card,
)
from .inflate import inflate_2d_state_dict, inflate_patch_kernel
from .patch_embed import PatchEmbed3d, patch_grid, resample_patch_embed
from .pos_embed import resample_pos_embed
from .presets import PRESETS, list_models, preset_config
from .vision_transformer import VisionTransformer3d

__all__ = [
    "KNOWN_RELEASES",
    "METADATA_KEY",
    "PRESETS",
    "Block",
    "LoadReport",
    "PatchEmbed3d",
    "VisionTransformer3d",
    "activation_bytes_per_sample",
    "convert_dinov2_checkpoint",
    "create_model",
    "find_prefix",
    "inflate_2d_state_dict",
    "inflate_patch_kernel",
    "is_hub_id",
    "list_models",
    "load_pretrained",
    "load_weights",
    "patch_grid",
    "preset_config",
    "read_model_metadata",
    "read_state_dict",
    "resample_patch_embed",
    "resample_pos_embed",
    "save_pretrained",
    "saved_tensor_bytes",
    "write_model_card",
]
