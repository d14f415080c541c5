"""tapct_data: everything between a CT scan on disk and a batch on the device.

Knows no model. Conventions (DESIGN.md section 3): volumes ``(C, D, H, W)`` in the
canonical LPS orientation with the axial axis first, HU float32, spacing ``(sd, sh, sw)`` mm.

The tensor path (crops, intensity, multi-crop, masks, collate) imports with torch alone;
the readers, the store and the dataset (nibabel, SimpleITK, pydicom, zarr, torchio) are
imported on first use of their names (module ``__getattr__``, PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import phantom
from .collate import (
    CropBatch,
    SlabBatch,
    collate_crops,
    collate_data_and_cast,
    collate_slabs,
)
from .crops import (
    CropParams,
    RandomResizedCrop3d,
    ResizedCrop3d,
    nearest_crop3d,
    resized_crop3d,
    uncrop3d,
)
from .errors import (
    DicomGeometryWarning,
    IncompleteStoreWarning,
    LabelMapError,
    NotCTError,
    NotCTWarning,
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
    skip_reason,
    write_listing,
)
from .intensity import (
    AdjustGamma,
    BlurParams,
    GammaParams,
    GaussianBlur2d,
    RandomGamma,
    RandomGaussianBlur,
    adjust_gamma,
    gaussian_blur2d,
)
from .masking import MaskingConfig, MaskingGenerator3d, sample_batch_masks
from .multicrop import (
    MultiCropAugmentation,
    MultiCropConfig,
    MultiCropParams,
    MultiCrops,
    MultiCropViews,
)
from .resize import resample_to_spacing, resize_for_eval
from .volume import Volume

if TYPE_CHECKING:
    from .dataset import PretrainSlabDataset
    from .fingerprint import (
        Fingerprint,
        ForegroundStats,
        body_mask,
        compute_fingerprint,
        compute_foreground_stats,
    )
    from .io import read_label, read_volume, resample_label, write_volume
    from .normalize import ClipNormalize, NormalizeConfig
    from .sampler import IterationBatchSampler
    from .store import (
        StoreReport,
        ZarrStoreCollection,
        ZarrVolumeStore,
        build_zarr_store,
        open_stores,
    )

# Names whose modules need the heavy readers: imported on first access.
_LAZY = {
    "PretrainSlabDataset": "dataset",
    "read_label": "io",
    "read_volume": "io",
    "resample_label": "io",
    "write_volume": "io",
    "ClipNormalize": "normalize",
    "NormalizeConfig": "normalize",
    "Fingerprint": "fingerprint",
    "ForegroundStats": "fingerprint",
    "body_mask": "fingerprint",
    "compute_fingerprint": "fingerprint",
    "compute_foreground_stats": "fingerprint",
    "IterationBatchSampler": "sampler",
    "StoreReport": "store",
    "ZarrStoreCollection": "store",
    "ZarrVolumeStore": "store",
    "build_zarr_store": "store",
    "open_stores": "store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AIR_HU",
    "FORMATS",
    "AdjustGamma",
    "BlurParams",
    "ClipNormalize",
    "CropBatch",
    "CropParams",
    "DicomGeometryWarning",
    "Fingerprint",
    "ForegroundStats",
    "GammaParams",
    "GaussianBlur2d",
    "ImageFormat",
    "IncompleteStoreWarning",
    "InputListing",
    "IterationBatchSampler",
    "LabelMapError",
    "MaskingConfig",
    "MaskingGenerator3d",
    "MultiCropAugmentation",
    "MultiCropConfig",
    "MultiCropParams",
    "MultiCropViews",
    "MultiCrops",
    "NormalizeConfig",
    "NotCTError",
    "NotCTWarning",
    "PretrainSlabDataset",
    "RandomGamma",
    "RandomGaussianBlur",
    "RandomResizedCrop3d",
    "ResizedCrop3d",
    "ScanSource",
    "Skipped",
    "SlabBatch",
    "StoreReport",
    "Volume",
    "ZarrStoreCollection",
    "ZarrVolumeStore",
    "adjust_gamma",
    "body_mask",
    "build_zarr_store",
    "collate_crops",
    "collate_data_and_cast",
    "collate_slabs",
    "compute_fingerprint",
    "compute_foreground_stats",
    "expand_inputs",
    "format_listing",
    "gaussian_blur2d",
    "image_suffix",
    "is_zarr_store",
    "nearest_crop3d",
    "open_stores",
    "phantom",
    "read_label",
    "read_scan",
    "read_volume",
    "resample_label",
    "resample_to_spacing",
    "resize_for_eval",
    "resized_crop3d",
    "sample_batch_masks",
    "scan_name",
    "skip_reason",
    "strip_image_suffix",
    "uncrop3d",
    "write_listing",
    "write_volume",
]
