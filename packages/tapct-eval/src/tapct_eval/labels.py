"""TotalSegmentator v2 label tables and the paper's 117 -> 49 class merge, as data.

The id -> name table of TotalSegmentator v2's ``total`` task (117 classes) is copied as
facts from the ``totalsegmentator`` PyPI package, version 2.18.0, file
``totalsegmentator/map_to_binary.py``, dictionary ``class_map["total"]``
(wasserth/TotalSegmentator, Apache-2.0). The 49 merged classes are the rows of paper
Table 8 (Appendix C.3), read first column top to bottom, then the second column; the
index of a name in :data:`TOTALSEGMENTATOR_49_CLASSES` is its new label id (0 =
background).

Merge rules (paper C.3: "anatomically related subclasses ... merged into a single
category"): left/right pairs become one class (kidneys, adrenal glands, kidney cysts,
iliac arteries and veins, humerus, scapula, clavicula, femur, hips, gluteus muscles,
autochthon, iliopsoas, subclavian and common carotid arteries, brachiocephalic veins),
the five lung lobes become Lungs, the 24 ribs Ribs, and the 25 vertebrae C1-S1 Vertebrae.
``vertebrae_S1`` is a vertebra class in TotalSegmentator and goes to Vertebrae; the
separate ``sacrum`` class keeps its own Sacrum row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, overload

import numpy as np
import torch

__all__ = [
    "TOTALSEGMENTATOR_49_CLASSES",
    "TOTALSEGMENTATOR_V2_CLASSES",
    "TOTALSEGMENTATOR_V2_TO_49",
    "merge_totalsegmentator_labels",
    "remap_labels",
]

#: TotalSegmentator v2 ``total`` task: label id -> structure name (0 is background).
#: Source: ``totalsegmentator==2.18.0``, ``totalsegmentator/map_to_binary.py``,
#: ``class_map["total"]``.
TOTALSEGMENTATOR_V2_CLASSES: Final[Mapping[int, str]] = MappingProxyType(
    {
        1: "spleen",
        2: "kidney_right",
        3: "kidney_left",
        4: "gallbladder",
        5: "liver",
        6: "stomach",
        7: "pancreas",
        8: "adrenal_gland_right",
        9: "adrenal_gland_left",
        10: "lung_upper_lobe_left",
        11: "lung_lower_lobe_left",
        12: "lung_upper_lobe_right",
        13: "lung_middle_lobe_right",
        14: "lung_lower_lobe_right",
        15: "esophagus",
        16: "trachea",
        17: "thyroid_gland",
        18: "small_bowel",
        19: "duodenum",
        20: "colon",
        21: "urinary_bladder",
        22: "prostate",
        23: "kidney_cyst_left",
        24: "kidney_cyst_right",
        25: "sacrum",
        26: "vertebrae_S1",
        27: "vertebrae_L5",
        28: "vertebrae_L4",
        29: "vertebrae_L3",
        30: "vertebrae_L2",
        31: "vertebrae_L1",
        32: "vertebrae_T12",
        33: "vertebrae_T11",
        34: "vertebrae_T10",
        35: "vertebrae_T9",
        36: "vertebrae_T8",
        37: "vertebrae_T7",
        38: "vertebrae_T6",
        39: "vertebrae_T5",
        40: "vertebrae_T4",
        41: "vertebrae_T3",
        42: "vertebrae_T2",
        43: "vertebrae_T1",
        44: "vertebrae_C7",
        45: "vertebrae_C6",
        46: "vertebrae_C5",
        47: "vertebrae_C4",
        48: "vertebrae_C3",
        49: "vertebrae_C2",
        50: "vertebrae_C1",
        51: "heart",
        52: "aorta",
        53: "pulmonary_vein",
        54: "brachiocephalic_trunk",
        55: "subclavian_artery_right",
        56: "subclavian_artery_left",
        57: "common_carotid_artery_right",
        58: "common_carotid_artery_left",
        59: "brachiocephalic_vein_left",
        60: "brachiocephalic_vein_right",
        61: "atrial_appendage_left",
        62: "superior_vena_cava",
        63: "inferior_vena_cava",
        64: "portal_vein_and_splenic_vein",
        65: "iliac_artery_left",
        66: "iliac_artery_right",
        67: "iliac_vena_left",
        68: "iliac_vena_right",
        69: "humerus_left",
        70: "humerus_right",
        71: "scapula_left",
        72: "scapula_right",
        73: "clavicula_left",
        74: "clavicula_right",
        75: "femur_left",
        76: "femur_right",
        77: "hip_left",
        78: "hip_right",
        79: "spinal_cord",
        80: "gluteus_maximus_left",
        81: "gluteus_maximus_right",
        82: "gluteus_medius_left",
        83: "gluteus_medius_right",
        84: "gluteus_minimus_left",
        85: "gluteus_minimus_right",
        86: "autochthon_left",
        87: "autochthon_right",
        88: "iliopsoas_left",
        89: "iliopsoas_right",
        90: "brain",
        91: "skull",
        92: "rib_left_1",
        93: "rib_left_2",
        94: "rib_left_3",
        95: "rib_left_4",
        96: "rib_left_5",
        97: "rib_left_6",
        98: "rib_left_7",
        99: "rib_left_8",
        100: "rib_left_9",
        101: "rib_left_10",
        102: "rib_left_11",
        103: "rib_left_12",
        104: "rib_right_1",
        105: "rib_right_2",
        106: "rib_right_3",
        107: "rib_right_4",
        108: "rib_right_5",
        109: "rib_right_6",
        110: "rib_right_7",
        111: "rib_right_8",
        112: "rib_right_9",
        113: "rib_right_10",
        114: "rib_right_11",
        115: "rib_right_12",
        116: "sternum",
        117: "costal_cartilages",
    }
)

#: The 49 classes of paper Table 8, in the table's order; index = merged label id.
TOTALSEGMENTATOR_49_CLASSES: Final[tuple[str, ...]] = (
    "Background",
    "Lungs",
    "Kidneys",
    "Ribs",
    "Vertebrae",
    "Spleen",
    "Gallbladder",
    "Liver",
    "Stomach",
    "Pancreas",
    "Adrenal Glands",
    "Esophagus",
    "Trachea",
    "Thyroid Glands",
    "Small Bowel",
    "Duodenum",
    "Colon",
    "Urinary Bladder",
    "Prostate",
    "Kidney Cysts",
    "Sacrum",
    "Superior Vena Cava",
    "Inferior Vena Cava",
    "Portal Vein and Splenic Vein",
    "Atrial Appendage",
    "Iliac Artery",
    "Iliac Vein",
    "Humerus",
    "Scapula",
    "Clavicula",
    "Femur",
    "Hips",
    "Spinal Cord",
    "Gluteus Maximus",
    "Gluteus Medius",
    "Gluteus Minimus",
    "Autochthon",
    "Iliopsoas",
    "Brain",
    "Skull",
    "Sternum",
    "Costal Cartilages",
    "Heart",
    "Aorta",
    "Pulmonary Vein",
    "Brachiocephalic Trunk",
    "Subclavian Artery",
    "Common Carotid Artery",
    "Brachiocephalic Vein",
)


def _merged_name(v2_name: str) -> str:
    """Table 8 row of one TotalSegmentator v2 structure (the merge rule, by name)."""
    prefix_groups = (
        ("lung_", "Lungs"),
        ("rib_", "Ribs"),
        ("vertebrae_", "Vertebrae"),
        ("kidney_cyst_", "Kidney Cysts"),
        ("kidney_", "Kidneys"),
        ("adrenal_gland_", "Adrenal Glands"),
        ("iliac_artery_", "Iliac Artery"),
        ("iliac_vena_", "Iliac Vein"),
        ("subclavian_artery_", "Subclavian Artery"),
        ("common_carotid_artery_", "Common Carotid Artery"),
        ("brachiocephalic_vein_", "Brachiocephalic Vein"),
        ("atrial_appendage_", "Atrial Appendage"),
        ("hip_", "Hips"),
        ("thyroid_gland", "Thyroid Glands"),
    )
    for prefix, group in prefix_groups:
        if v2_name.startswith(prefix):
            return group
    for side in ("_left", "_right"):
        v2_name = v2_name.removesuffix(side)
    special = {"portal_vein_and_splenic_vein": "Portal Vein and Splenic Vein"}
    return special.get(v2_name, v2_name.replace("_", " ").title())


def _build_v2_to_49() -> Mapping[int, int]:
    index = {name: i for i, name in enumerate(TOTALSEGMENTATOR_49_CLASSES)}
    mapping = {0: 0}
    for v2_id, v2_name in TOTALSEGMENTATOR_V2_CLASSES.items():
        group = _merged_name(v2_name)
        if group not in index:  # pragma: no cover - guarded by the tests
            raise RuntimeError(f"TotalSegmentator class {v2_name!r} has no Table 8 row ({group!r})")
        mapping[v2_id] = index[group]
    return MappingProxyType(mapping)


#: TotalSegmentator v2 id (0-117) -> merged id (0-48) of :data:`TOTALSEGMENTATOR_49_CLASSES`.
TOTALSEGMENTATOR_V2_TO_49: Final[Mapping[int, int]] = _build_v2_to_49()


@overload
def remap_labels(
    labels: torch.Tensor,
    mapping: Mapping[int, int] | Sequence[int],
    *,
    unmapped: int | None = None,
) -> torch.Tensor: ...


@overload
def remap_labels(
    labels: np.ndarray,
    mapping: Mapping[int, int] | Sequence[int],
    *,
    unmapped: int | None = None,
) -> np.ndarray: ...


def remap_labels(
    labels: np.ndarray | torch.Tensor,
    mapping: Mapping[int, int] | Sequence[int],
    *,
    unmapped: int | None = None,
) -> np.ndarray | torch.Tensor:
    """Replace every label id by ``mapping[id]`` with a lookup table.

    Args:
        labels: integer label map of any shape (e.g. ``(D, H, W)``), numpy array or tensor.
        mapping: old id -> new id, as a dict or a sequence whose index is the old id.
        unmapped: the new id for ids absent from ``mapping``; ``None`` (default) raises.

    Returns:
        The remapped labels, same shape and container as the input (int64; a tensor stays
        on its device).

    Raises:
        TypeError: when ``labels`` is not an integer array/tensor.
        ValueError: when a label is negative, or is absent from ``mapping`` and
            ``unmapped`` is None.
    """
    table_map = dict(enumerate(mapping)) if isinstance(mapping, Sequence) else dict(mapping)
    if any(k < 0 for k in table_map):
        raise ValueError(f"mapping keys must be >= 0, got {sorted(k for k in table_map if k < 0)}")
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        values = labels.long()
    elif isinstance(labels, np.ndarray):
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
        values = torch.from_numpy(labels.astype(np.int64))
    else:
        raise TypeError(
            f"labels must be a numpy array or torch tensor, got {type(labels).__name__}"
        )
    if values.numel() == 0:
        return labels.long() if isinstance(labels, torch.Tensor) else labels.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0:
        raise ValueError(f"labels must be >= 0, found {lo}")
    size = max(hi, max(table_map, default=0)) + 1
    lut = torch.full((size,), -1, dtype=torch.long)
    for old, new in table_map.items():
        lut[old] = new
    if unmapped is not None:
        lut[lut == -1] = unmapped
    out = lut.to(values.device)[values]
    if unmapped is None and bool((out == -1).any()):
        missing = torch.unique(values[out == -1]).tolist()
        raise ValueError(f"label ids {missing[:20]} are not in the mapping")
    return out if isinstance(labels, torch.Tensor) else out.numpy()


@overload
def merge_totalsegmentator_labels(labels: torch.Tensor) -> torch.Tensor: ...


@overload
def merge_totalsegmentator_labels(labels: np.ndarray) -> np.ndarray: ...


def merge_totalsegmentator_labels(labels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Merge a TotalSegmentator v2 label map (ids 0-117) into the paper's 49 classes.

    Args:
        labels: integer label map of v2 ids, any shape (e.g. ``(D, H, W)``), array or tensor.

    Returns:
        int64 labels in ``0..48`` indexing :data:`TOTALSEGMENTATOR_49_CLASSES`, same shape
        and container type.

    Raises:
        TypeError: when ``labels`` is not integer.
        ValueError: when an id is outside ``0..117``.

    References:
        Paper Appendix C.3 and Table 8.
    """
    return remap_labels(labels, TOTALSEGMENTATOR_V2_TO_49)
