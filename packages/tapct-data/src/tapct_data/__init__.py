"""tapct_data: everything between a CT scan on disk and a batch on the device.

Knows no model. Conventions (DESIGN.md section 3): volumes ``(C, D, H, W)`` in the
canonical LPS orientation with the axial axis first, HU float32, spacing ``(sd, sh, sw)`` mm.
"""

from .errors import DicomGeometryWarning, NotCTError, NotCTWarning
from .io import read_label, read_volume, write_volume
from .volume import Volume

__all__ = [
    "DicomGeometryWarning",
    "NotCTError",
    "NotCTWarning",
    "Volume",
    "read_label",
    "read_volume",
    "write_volume",
]
