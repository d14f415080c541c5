"""The TotalSegmentator v2 -> 49 class merge, checked class by class against paper Table 8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tapct_eval import (
    TOTALSEGMENTATOR_49_CLASSES,
    TOTALSEGMENTATOR_V2_CLASSES,
    TOTALSEGMENTATOR_V2_TO_49,
    merge_totalsegmentator_labels,
    remap_labels,
)

# Paper Table 8 (tap-ct-paper.txt), first column then second column.
TABLE_8 = [
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
]

_SIDES = ("left", "right")
EXPECTED_GROUPS = {
    "Lungs": [
        "lung_upper_lobe_left",
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    ],
    "Kidneys": ["kidney_right", "kidney_left"],
    "Ribs": [f"rib_{s}_{i}" for s in _SIDES for i in range(1, 13)],
    "Vertebrae": ["vertebrae_S1"]
    + [f"vertebrae_L{i}" for i in range(1, 6)]
    + [f"vertebrae_T{i}" for i in range(1, 13)]
    + [f"vertebrae_C{i}" for i in range(1, 8)],
    "Spleen": ["spleen"],
    "Gallbladder": ["gallbladder"],
    "Liver": ["liver"],
    "Stomach": ["stomach"],
    "Pancreas": ["pancreas"],
    "Adrenal Glands": ["adrenal_gland_right", "adrenal_gland_left"],
    "Esophagus": ["esophagus"],
    "Trachea": ["trachea"],
    "Thyroid Glands": ["thyroid_gland"],
    "Small Bowel": ["small_bowel"],
    "Duodenum": ["duodenum"],
    "Colon": ["colon"],
    "Urinary Bladder": ["urinary_bladder"],
    "Prostate": ["prostate"],
    "Kidney Cysts": ["kidney_cyst_left", "kidney_cyst_right"],
    "Sacrum": ["sacrum"],
    "Superior Vena Cava": ["superior_vena_cava"],
    "Inferior Vena Cava": ["inferior_vena_cava"],
    "Portal Vein and Splenic Vein": ["portal_vein_and_splenic_vein"],
    "Atrial Appendage": ["atrial_appendage_left"],
    "Iliac Artery": ["iliac_artery_left", "iliac_artery_right"],
    "Iliac Vein": ["iliac_vena_left", "iliac_vena_right"],
    "Humerus": ["humerus_left", "humerus_right"],
    "Scapula": ["scapula_left", "scapula_right"],
    "Clavicula": ["clavicula_left", "clavicula_right"],
    "Femur": ["femur_left", "femur_right"],
    "Hips": ["hip_left", "hip_right"],
    "Spinal Cord": ["spinal_cord"],
    "Gluteus Maximus": ["gluteus_maximus_left", "gluteus_maximus_right"],
    "Gluteus Medius": ["gluteus_medius_left", "gluteus_medius_right"],
    "Gluteus Minimus": ["gluteus_minimus_left", "gluteus_minimus_right"],
    "Autochthon": ["autochthon_left", "autochthon_right"],
    "Iliopsoas": ["iliopsoas_left", "iliopsoas_right"],
    "Brain": ["brain"],
    "Skull": ["skull"],
    "Sternum": ["sternum"],
    "Costal Cartilages": ["costal_cartilages"],
    "Heart": ["heart"],
    "Aorta": ["aorta"],
    "Pulmonary Vein": ["pulmonary_vein"],
    "Brachiocephalic Trunk": ["brachiocephalic_trunk"],
    "Subclavian Artery": ["subclavian_artery_right", "subclavian_artery_left"],
    "Common Carotid Artery": ["common_carotid_artery_right", "common_carotid_artery_left"],
    "Brachiocephalic Vein": ["brachiocephalic_vein_left", "brachiocephalic_vein_right"],
}


def test_49_classes_are_table_8_in_order():
    assert list(TOTALSEGMENTATOR_49_CLASSES) == TABLE_8
    assert len(TABLE_8) == 49


def test_v2_table_spot_checks():
    assert len(TOTALSEGMENTATOR_V2_CLASSES) == 117
    assert sorted(TOTALSEGMENTATOR_V2_CLASSES) == list(range(1, 118))
    assert TOTALSEGMENTATOR_V2_CLASSES[1] == "spleen"
    assert TOTALSEGMENTATOR_V2_CLASSES[8] == "adrenal_gland_right"
    assert TOTALSEGMENTATOR_V2_CLASSES[90] == "brain"
    assert TOTALSEGMENTATOR_V2_CLASSES[117] == "costal_cartilages"


@pytest.mark.parametrize("group", list(EXPECTED_GROUPS))
def test_each_table_8_class_collects_exactly_its_v2_classes(group):
    name_to_id = {n: i for i, n in TOTALSEGMENTATOR_V2_CLASSES.items()}
    new_id = TABLE_8.index(group)
    got = sorted(v2 for v2, new in TOTALSEGMENTATOR_V2_TO_49.items() if new == new_id)
    assert got == sorted(name_to_id[n] for n in EXPECTED_GROUPS[group])


def test_every_v2_id_maps_to_exactly_one_class():
    expected_names = [n for names in EXPECTED_GROUPS.values() for n in names]
    assert sorted(expected_names) == sorted(TOTALSEGMENTATOR_V2_CLASSES.values())
    assert set(TOTALSEGMENTATOR_V2_TO_49) == set(range(118))
    assert TOTALSEGMENTATOR_V2_TO_49[0] == 0
    assert set(TOTALSEGMENTATOR_V2_TO_49.values()) == set(range(49))


def test_merge_array_and_tensor():
    v2 = np.array([[0, 1, 10, 14], [92, 115, 26, 117]], dtype=np.int16)
    expected = np.array([[0, 5, 1, 1], [3, 3, 4, 41]])
    np.testing.assert_array_equal(merge_totalsegmentator_labels(v2), expected)
    out = merge_totalsegmentator_labels(torch.from_numpy(v2))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    assert out.tolist() == expected.tolist()
    with pytest.raises(ValueError, match=r"\[118\]"):
        merge_totalsegmentator_labels(np.array([118]))


def test_remap_labels_rules():
    assert remap_labels(np.array([0, 2, 5]), {0: 0, 2: 1, 5: 1}).tolist() == [0, 1, 1]
    assert remap_labels(torch.tensor([0, 1, 2]), [0, 0, 7]).tolist() == [0, 0, 7]
    assert remap_labels(np.array([0, 3]), {0: 0}, unmapped=9).tolist() == [0, 9]
    with pytest.raises(TypeError, match="integer"):
        remap_labels(np.array([0.5]), {0: 0})
    with pytest.raises(ValueError, match=">= 0"):
        remap_labels(np.array([-1]), {0: 0})
