"""tapct_data: everything between a CT scan on disk and a batch on the device.

Knows no model. Conventions (DESIGN.md section 3): volumes ``(C, D, H, W)`` in the
canonical LPS orientation with the axial axis first, HU float32, spacing ``(sd, sh, sw)`` mm.
"""

from . import phantom
from .collate import collate_crops, collate_data_and_cast
from .crops import CropParams, RandomResizedCrop3d, resized_crop3d
from .dataset import PretrainSlabDataset
from .errors import DicomGeometryWarning, LabelMapError, NotCTError, NotCTWarning
from .fingerprint import (
    Fingerprint,
    ForegroundStats,
    body_mask,
    compute_fingerprint,
    compute_foreground_stats,
)
from .formats import (
    AIR_HU,
    FORMATS,
    ImageFormat,
    image_suffix,
    is_zarr_store,
    strip_image_suffix,
)
from .inputs import (
    InputListing,
    ScanSource,
    Skipped,
    expand_inputs,
    format_listing,
    read_scan,
    scan_name,
    write_listing,
)
from .intensity import (
    BlurParams,
    GammaParams,
    RandomGamma,
    RandomGaussianBlur,
    adjust_gamma,
    gaussian_blur2d,
)
from .io import read_label, read_volume, write_volume
from .masking import MaskingGenerator3d
from .multicrop import MultiCropAugmentation, MultiCropParams
from .normalize import ClipNormalize, NormalizeConfig
from .resize import resample_to_spacing, resize_for_eval
from .store import ZarrVolumeStore, build_zarr_store
from .volume import Volume

__all__ = [
    "AIR_HU",
    "FORMATS",
    "BlurParams",
    "ClipNormalize",
    "CropParams",
    "DicomGeometryWarning",
    "Fingerprint",
    "ForegroundStats",
    "GammaParams",
    "ImageFormat",
    "InputListing",
    "LabelMapError",
    "MaskingGenerator3d",
    "MultiCropAugmentation",
    "MultiCropParams",
    "NormalizeConfig",
    "NotCTError",
    "NotCTWarning",
    "PretrainSlabDataset",
    "RandomGamma",
    "RandomGaussianBlur",
    "RandomResizedCrop3d",
    "ScanSource",
    "Skipped",
    "Volume",
    "ZarrVolumeStore",
    "adjust_gamma",
    "body_mask",
    "build_zarr_store",
    "collate_crops",
    "collate_data_and_cast",
    "compute_fingerprint",
    "compute_foreground_stats",
    "expand_inputs",
    "format_listing",
    "gaussian_blur2d",
    "image_suffix",
    "is_zarr_store",
    "phantom",
    "read_label",
    "read_scan",
    "read_volume",
    "resample_to_spacing",
    "resize_for_eval",
    "resized_crop3d",
    "scan_name",
    "strip_image_suffix",
    "write_listing",
    "write_volume",
]
