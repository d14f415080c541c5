"""The real labelled scans end to end (train on example_ct_sm, test on the DICOM series)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tapct_eval import TOTALSEGMENTATOR_49_CLASSES, merge_totalsegmentator_labels, run_benchmark

tapct_data = pytest.importorskip("tapct_data")
tapct_vit3d = pytest.importorskip("tapct_vit3d")


def test_dicom_label_map_lands_on_the_body(shared_data):
    """The LAS-stored label map and the DICOM series share the canonical grid."""
    image = tapct_data.read_volume(shared_data / "ct/example_ct_dicom")
    label = tapct_data.read_label(
        shared_data / "labels/example_ct_dicom_seg.nii.gz", reference=image
    )
    assert label.data.shape == image.data.shape == (1, 20, 512, 512)
    merged = merge_totalsegmentator_labels(label.data[0].long())
    inside = image.data[0][merged > 0] > -500  # organs and bones, not air
    assert inside.float().mean() > 0.95
    flipped = image.data[0].flip(-2)[merged > 0] > -500  # rows flipped: clearly worse
    assert flipped.float().mean() < inside.float().mean() - 0.02


def test_probe_on_real_scans(shared_data, tmp_path):
    normalize = tapct_data.ClipNormalize()
    task = {
        "name": "real",
        "kind": "segmentation",
        "roi_size": [12, 64, 64],
        "overlap": 0.0,
        "num_classes": 49,
        "label_map": "totalsegmentator_49",
        "in_plane_size": [64, 64],
        "steps": 5,
        "lr": 0.01,
        "train": [
            {
                "image": str(shared_data / "ct/example_ct_sm.nii.gz"),
                "label": str(shared_data / "labels/example_ct_sm_seg.nii.gz"),
            }
        ],
        "test": [
            {
                "image": str(shared_data / "ct/example_ct_dicom"),
                "label": str(shared_data / "labels/example_ct_dicom_seg.nii.gz"),
            }
        ],
    }
    (tmp_path / "task.json").write_text(json.dumps(task))
    torch.manual_seed(0)
    model = tapct_vit3d.create_model("tap_nano_3d")
    res = run_benchmark(
        tmp_path / "task.json",
        model,
        tmp_path / "out",
        seeds=(0,),
        model_name="nano",
        load_image=lambda p: normalize(tapct_data.read_volume(p).data),
        load_label=lambda p, i: tapct_data.read_label(p, reference=tapct_data.read_volume(i)).data[
            0
        ],
    )
    assert 0.0 <= res.summary.mean <= 1.0 and not math.isnan(res.summary.mean)
    assert set(res.per_class) <= set(TOTALSEGMENTATOR_49_CLASSES[1:])
    assert "Liver" in res.per_class or "Lungs" in res.per_class
    assert res.files["overlay"].stat().st_size > 1000
    assert res.files["retrieval"].stat().st_size > 1000
