"""Any encoder, one interface: our ViT, timm 2D models slice by slice, MONAI encoders.

See :mod:`tapct_eval.encoders.base` for the protocol. timm is imported only when a timm
encoder is built (``tapct-eval[timm]``).
"""

from .backbone import BackboneEncoder
from .base import Encoder, EncoderOutput, Preprocessing, hu_window
from .monai_nets import MONAI_ENCODERS, MonaiEncoder, create_monai_encoder
from .spec import EncoderSpec, as_encoder, create_encoder, parse_encoder_spec
from .timm_slices import TimmSliceEncoder, create_timm_encoder

__all__ = [
    "MONAI_ENCODERS",
    "BackboneEncoder",
    "Encoder",
    "EncoderOutput",
    "EncoderSpec",
    "MonaiEncoder",
    "Preprocessing",
    "TimmSliceEncoder",
    "as_encoder",
    "create_encoder",
    "create_monai_encoder",
    "create_timm_encoder",
    "hu_window",
    "parse_encoder_spec",
]
