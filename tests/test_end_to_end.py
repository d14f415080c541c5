"""End to end on the real scans: pretrain, resume, export, embed, benchmark, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory, run_tapct, tiny):
    """Pretrain a tiny model for 2 + 2 iterations (stop, then resume) on the CT scans."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    ct = shared_data / "ct"
    data = ["--data", str(ct / "example_ct_sm.nii.gz"), "--data", str(ct / "example_ct_dicom")]
    first = run_tapct("pretrain", *data, *tiny(iterations=4), "--stop-after", "2", "-o", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    assert not (out / "model").exists()
    second = run_tapct("pretrain", *data, *tiny(iterations=4), "-o", str(out))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from" in second.stdout and "iterations 2 -> 4 of 4" in second.stdout
    return out


def test_pretrain_on_ct_exports_the_encoder(trained):
    from tapct_vit3d import load_pretrained

    model = load_pretrained(trained / "model")
    assert model.patch_size == (4, 8, 8)
    assert list(trained.glob("cache/scans-*.zarr"))  # scans were converted to a zarr store
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["iterations_done"] == 4


def test_embed_a_dicom_scan(trained, shared_data, tmp_path, run_tapct):
    out = tmp_path / "emb"
    res = run_tapct("embed", str(shared_data / "ct" / "example_ct_sm.nii.gz"), "--model",
                    str(trained / "model"), "-o", str(out), "--roi", "8,64,64", "--device", "cpu")
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    scan = manifest["scans"][0]
    assert scan["volume_shape"] == [30, 101, 122]
    assert scan["spacing_mm"] == [3.0, 3.0, 3.0]
    # (E, ceil(D/4), ceil(H/8), ceil(W/8)) with E = 48 for tap_nano_3d
    assert scan["patch_features_shape"] == [48, 8, 13, 16]
    from safetensors.torch import load_file

    t = load_file(str(out / scan["file"]))
    assert tuple(t["patch_features"].shape) == (48, 8, 13, 16)
    assert torch.isfinite(t["patch_features"]).all()
    assert t["cls_tokens"].shape[1] == 48
    assert (out / scan["pca_png"]).read_bytes()[:4] == b"\x89PNG"


def test_segmentation_benchmark_between_the_labelled_scans(trained, shared_data, tmp_path,
                                                            run_tapct):
    task = tmp_path / "task.yaml"
    task.write_text(
        "name: totalseg-two-scans\nkind: segmentation\nroi_size: [8, 64, 64]\n"
        "num_classes: 49\nlabel_map: totalsegmentator_49\nin_plane_size: [64, 64]\n"
        "steps: 20\n"
        f"train: [{{image: {shared_data}/ct/example_ct_sm.nii.gz, "
        f"label: {shared_data}/labels/example_ct_sm_seg.nii.gz}}]\n"
        f"test: [{{image: {shared_data}/ct/example_ct_dicom, "
        f"label: {shared_data}/labels/example_ct_dicom_seg.nii.gz}}]\n"
    )
    out = tmp_path / "bench"
    res = run_tapct("benchmark", str(task), "--model", str(trained / "model"), "-o", str(out),
                    "--seeds", "0,1", "--device", "cpu")
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    text = json.dumps(results)
    assert "dice" in text
    assert list(out.glob("*.csv"))


@pytest.mark.parametrize(
    ("relpath", "needle"),
    [
        ("robustness/dicom_truncated_pixels.dcm", "corrupt or truncated pixel data"),
        ("robustness/dicom_no_file_meta.dcm", "cannot parse DICOM header"),
        ("robustness/dicom_same_position", "duplicate slice positions"),
        ("robustness/dicom_missing_slice", "uneven slice steps"),
        ("robustness/dicom_two_slabs_gap", "uneven slice steps"),
        ("robustness/nifti_rgb_not_hu.nii.gz", "RGB"),
        ("robustness/image_2d.mha", "2D image"),
        ("robustness/dicom_jpegls_mr", "not 'CT'"),
        ("mr/example_mr_sm.nii.gz", "far from HU"),
        ("ct/does_not_exist.nii.gz", "no such file or directory"),
    ],
)
def test_bad_input_gives_one_line_error_and_no_output(shared_data, tmp_path, relpath, needle,
                                                      capsys):
    from tapct_app.cli import main

    path = shared_data / relpath
    rc = main(["embed", str(path), "--model", "tap_nano_3d", "-o", str(tmp_path / "emb"),
               "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("tapct: warning")]
    assert len(lines) == 1, err  # (the preset gives a one-line random-weights warning)
    assert lines[0].startswith(f"tapct: error: {path}")
    assert needle in lines[0]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_bad_roi_is_one_line(shared_data, tmp_path, capsys):
    from tapct_app.cli import main

    rc = main(["embed", str(shared_data / "ct" / "example_ct_sm.nii.gz"), "--model",
               "tap_nano_3d", "-o", str(tmp_path / "o"), "--roi", "5,64,64"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "tapct: error: --roi 5,64,64: each axis must be a multiple of the model's patch "
        "size 4,8,8")
    assert not (tmp_path / "o").exists()


def test_bad_scan_in_pretrain_data_leaves_nothing(shared_data, tmp_path, tiny, capsys):
    from tapct_app.cli import main

    out = tmp_path / "run"
    rc = main(["pretrain", "--data", str(shared_data / "mr" / "example_mr_sm.nii.gz"),
               *tiny(iterations=1), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "example_mr_sm.nii.gz" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
