"""``tapct benchmark`` with any encoder: timm, MONAI and our preset side by side."""

from __future__ import annotations

import csv
import json
import math

import pytest

MODELS = ["timm:vit_small_patch16_224", "monai:SwinUNETR", "tap_nano_3d"]


def _task(tmp_path, shared_data, roi=(4, 32, 32)):
    task = tmp_path / "task.yaml"
    task.write_text(
        f"name: two-scans\nkind: segmentation\nroi_size: {list(roi)}\nnum_classes: 49\n"
        "label_map: totalsegmentator_49\nin_plane_size: [64, 64]\nsteps: 3\n"
        "accumulation_steps: 1\nblend_mode: gaussian\n"
        f"train: [{{image: {shared_data}/ct/example_ct_sm.nii.gz, "
        f"label: {shared_data}/labels/example_ct_sm_seg.nii.gz}}]\n"
        f"test: [{{image: {shared_data}/ct/example_ct_dicom, "
        f"label: {shared_data}/labels/example_ct_dicom_seg.nii.gz}}]\n"
    )
    return task


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_timm_monai_and_our_preset_side_by_side(shared_data, tmp_path, capsys):
    from tapct_app.cli import main

    pytest.importorskip("timm")
    out = tmp_path / "bench"
    argv = ["benchmark", str(_task(tmp_path, shared_data))]
    for model in MODELS:
        argv += ["--model", model]
    rc = main([*argv, "-o", str(out), "--seeds", "0", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert rc == 0
    with (out / "comparison.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == MODELS
    for row in rows:
        assert row["metric"] == "dice" and row["n_valid"] == "1"
        assert 0.0 <= float(row["mean"]) <= 1.0 and not math.isnan(float(row["mean"]))
    assert "models side by side" in printed and all(m in printed for m in MODELS)
    # each model's features were taken at its own stride and window
    grids = {}
    for model, folder in zip(MODELS, ["timm_vit_small_patch16_224", "monai_SwinUNETR",
                                      "tap_nano_3d"]):
        result = json.loads((out / folder / "results.json").read_text())
        assert result["model"] == model
        import torch

        cached = out / folder / "features" / folder / "two-scans" / "example_ct_dicom.pt"
        grids[model] = tuple(torch.load(cached, weights_only=True)["patch_features"].shape)
    # test scan: 20 slices of 512 x 512 -> 224 x 224 for the 2D model, 64 x 64 otherwise
    assert grids["timm:vit_small_patch16_224"] == (384, 20, 14, 14)  # stride (1, 16, 16)
    assert grids["monai:SwinUNETR"] == (384, 1, 2, 2)  # stride 32, window 32^3
    assert grids["tap_nano_3d"] == (48, 5, 8, 8)  # stride (4, 8, 8)


def test_bad_encoder_spec_is_one_line_user_error(shared_data, tmp_path, capsys):
    from tapct_app.cli import main

    task = _task(tmp_path, shared_data)
    rc = main(["benchmark", str(task), "--model", "monai:VNet", "-o", str(tmp_path / "o"),
               "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("tapct: error: --model monai:VNet: unknown MONAI encoder")
    assert not (tmp_path / "o").exists()
