"""A label paired with an image (benchmark, retrieve): one check, one line, nothing written.

The kinds: another scan's label (no overlap), a label shifted by a known translation (too
little cover: refused; partial cover: one warning), a CT given as the label, values the
task's classes cannot hold (255, a too small ``num_classes``), and ``ignore_index``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from tapct_app.cli import main

# The NIfTI scan and its TotalSegmentator label: 30 x 101 x 122 voxels of 3 mm.
CT = "ct/example_ct_sm.nii.gz"
SEG = "labels/example_ct_sm_seg.nii.gz"


def _write_label(shared_data: Path, out: Path, *, shift_mm: float = 0.0,
                 set_255: bool = False) -> Path:
    """The real label moved ``shift_mm`` along its slice axis, optionally a 255 border."""
    img = nib.load(shared_data / SEG)
    data = np.asarray(img.dataobj).astype(np.int16)
    if set_255:
        data[:2] = 255  # the first two sagittal planes: "unknown" in many tools
    affine = img.affine.copy()
    affine[:3, 3] += affine[:3, 2] / np.linalg.norm(affine[:3, 2]) * shift_mm  # along k (z)
    nib.save(nib.Nifti1Image(data, affine), out)
    return out


def _task(tmp_path: Path, image: Path, label: Path, **extra) -> Path:
    raw = {"name": "pairing", "kind": "segmentation", "roi_size": [8, 32, 32],
           "in_plane_size": [32, 32], "num_classes": 49, "label_map": "totalsegmentator_49",
           "steps": 2, "accumulation_steps": 1, "overlap": 0.0,
           "train": [{"image": str(image), "label": str(label)}],
           "test": [{"image": str(image), "label": str(label)}], **extra}
    raw = {k: v for k, v in raw.items() if v is not None}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(raw))
    return path


def _benchmark(task: Path, out: Path) -> int:
    return main(["benchmark", str(task), "--model", "tap_nano_3d", "-o", str(out),
                 "--seeds", "0", "--device", "cpu"])


def _assert_one_error(rc: int, err: str, path: Path, needle: str, out: Path) -> str:
    assert rc == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("tapct: error:")]
    others = [ln for ln in err.splitlines() if ln and not ln.startswith("tapct: ")]
    assert len(errors) == 1 and not others, err
    assert errors[0].startswith(f"tapct: error: {path}: "), errors[0]
    assert needle in errors[0], errors[0]
    assert "Traceback" not in err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))
    return errors[0]


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("shift_60mm", "covers only 33% of the extent of its image"),
        ("shift_1m", "none of its"),
        ("ct_as_label", "holds 1711 distinct values from -1100 to 1207"),
        ("value_255", "label values [255] are not in label_map totalsegmentator_49"),
        ("num_classes_2", "label values [2, 3, 4, 5, 6, 7, 8, 9, ... (40 values)] are outside"),
    ],
)
def test_benchmark_refuses_a_bad_label_in_one_line(shared_data, tmp_path, capsys, kind, needle):
    image = shared_data / CT
    extra: dict = {}
    if kind == "shift_60mm":  # 20 of 30 slices off the image: 33% cover
        label = _write_label(shared_data, tmp_path / "shifted.nii.gz", shift_mm=60.0)
    elif kind == "shift_1m":
        label = _write_label(shared_data, tmp_path / "far.nii.gz", shift_mm=1000.0)
    elif kind == "ct_as_label":
        label = image
    elif kind == "value_255":
        label = _write_label(shared_data, tmp_path / "border.nii.gz", set_255=True)
    else:  # a TotalSegmentator label with num_classes 2 and no label_map
        label = shared_data / SEG
        extra = {"num_classes": 2, "label_map": None}
    task = _task(tmp_path, image, label, **extra)
    out = tmp_path / "bench"
    line = _assert_one_error(_benchmark(task, out), capsys.readouterr().err, label, needle, out)
    if kind in ("value_255", "num_classes_2"):
        assert str(task) in line  # the task file whose num_classes it is
    if kind == "value_255":
        assert "set ignore_index: 255 in the task file" in line


def test_benchmark_refuses_another_scans_label(shared_data, tmp_path, capsys):
    """The real label of the NIfTI scan paired with the DICOM series (800 mm apart)."""
    task = _task(tmp_path, shared_data / CT, shared_data / SEG)
    raw = json.loads(task.read_text())
    raw["test"] = [{"image": str(shared_data / "ct" / "example_ct_dicom"),
                    "label": str(shared_data / SEG)}]
    task.write_text(json.dumps(raw))
    out = tmp_path / "bench"
    line = _assert_one_error(_benchmark(task, out), capsys.readouterr().err, shared_data / SEG,
                             "none of its 110225 foreground voxels lies inside the image", out)
    assert str(shared_data / "ct" / "example_ct_dicom") in line
    assert not (tmp_path / "features").exists()


def test_benchmark_with_ignore_index_and_partial_cover_runs_and_warns_once(shared_data,
                                                                          tmp_path, capsys):
    # 7 of 30 slices off the image (23/30 = 76.7% cover) and a 255 border, ignored.
    label = _write_label(shared_data, tmp_path / "partial.nii.gz", shift_mm=21.0, set_255=True)
    task = _task(tmp_path, shared_data / CT, label, ignore_index=255)
    out = tmp_path / "bench"
    rc = _benchmark(task, out)
    err = capsys.readouterr().err
    assert rc == 0, err
    cover = [ln for ln in err.splitlines() if "of the extent of its image" in ln]
    # One line per load of the pair (train and test name the same files).
    assert cover and all(ln == cover[0] for ln in cover), err
    assert cover[0] == (f"tapct: warning: {label}: covers 76.7% of the extent of its image "
                        f"{shared_data / CT}; the rest is read as background (a DICOM SEG may "
                        "leave out empty frames)")
    assert "error" not in err and "Traceback" not in err
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "dice" and results["n_valid"] == 1
    assert 0.0 <= results["mean"] <= 1.0


@pytest.mark.parametrize(("image", "label", "shape"), [
    (CT, SEG, (30, 101, 122)),
    ("ct/example_ct_dicom", "labels/example_ct_dicom_seg.nii.gz", (20, 512, 512)),  # LAS
    ("ct/ct_3slice_dicom", "labels/ct_3slice_liver_SEG.dcm", (3, 512, 512)),  # DICOM SEG
    ("ct/ct_3slice_dicom", "labels/ct_3slice_liver_spine_seg.nrrd", (3, 512, 512)),
])
def test_correct_pairings_load_without_warning(shared_data, image, label, shape):
    from tapct_app.readers import ScanLoaders

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = ScanLoaders().load_label(shared_data / label, shared_data / image)
    assert tuple(labels.shape) == shape and int(labels.max()) > 0


def test_a_dicom_seg_without_empty_frames_is_only_warned_about(shared_data, tmp_path):
    """dcmqi-style SEG keeping only the middle of 3 frames: its grid covers 1/3 of the CT."""
    import pydicom
    from tapct_app.readers import ScanLoaders
    from tapct_eval import LabelCoverWarning

    full_seg = shared_data / "labels" / "ct_3slice_liver_SEG.dcm"
    ds = pydicom.dcmread(full_seg)
    frame_bytes = ds.Rows * ds.Columns // 8  # BINARY: 1 bit per pixel, frames byte-aligned
    ds.PixelData = ds.PixelData[frame_bytes : 2 * frame_bytes]
    ds.NumberOfFrames = 1
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(
        [ds.PerFrameFunctionalGroupsSequence[1]]
    )
    one_frame = tmp_path / "one_frame_SEG.dcm"
    ds.save_as(one_frame)
    ct = shared_data / "ct" / "ct_3slice_dicom"
    with pytest.warns(LabelCoverWarning, match=r"one_frame_SEG.dcm: covers 33.3% of the extent "
                                               r"of its image .*a DICOM SEG may leave out"):
        labels = ScanLoaders().load_label(one_frame, ct)
    full = ScanLoaders().load_label(full_seg, ct)
    assert labels[[0, 2]].sum() == 0 and int(full[[0, 2]].sum()) > 0
    assert torch.equal(labels[1], full[1]) and int(labels[1].sum()) == 35645


def _retrieve(shared_data: Path, mask: Path, out: Path) -> int:
    ct = str(shared_data / CT)
    return main(["retrieve", ct, str(mask), ct, "--model", "tap_nano_3d", "-o", str(out),
                 "--device", "cpu", "--roi", "12,64,64"])


@pytest.mark.parametrize(("kind", "needle"), [
    ("ct_as_mask", "this looks like a CT image in HU, not a label map"),
    ("shift_60mm", "covers only 33% of the extent of its image"),
])
def test_retrieve_refuses_a_bad_mask_in_one_line(shared_data, tmp_path, capsys, kind, needle):
    if kind == "ct_as_mask":
        mask = shared_data / CT
    else:
        mask = _write_label(shared_data, tmp_path / "shifted.nii.gz", shift_mm=60.0)
    out = tmp_path / "ret"
    _assert_one_error(_retrieve(shared_data, mask, out), capsys.readouterr().err, mask,
                      needle, out)
