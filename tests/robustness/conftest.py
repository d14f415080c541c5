"""Fixtures of the bad-input suite: one folder of broken files and tiny models, built once."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bad_workspace(tmp_path_factory, shared_data) -> Path:
    """A folder of bad inputs next to good ones (read-only by convention).

    ``W/`` holds: ``garbage.nii.gz`` (text), ``trunc.nii.gz`` (a real scan cut at 20 kB),
    ``not_gzip.nii.gz`` (gzip of text), ``air.nii.gz`` (no body: all -1000 HU),
    ``air_mask.nii.gz`` (an all-zero mask on example_ct_sm's grid), ``empty/``,
    ``afile.txt``, ``garbage.pt``, ``bad.yaml`` (not YAML), ``task.yaml`` (a valid tiny
    segmentation task), ``task_bad_image.yaml`` (its train image is garbage),
    ``models/nano`` (tap_nano_3d save_pretrained), ``models/trunc`` (its
    model.safetensors cut in half), ``models/bad_config`` (config.json not JSON),
    ``models/empty`` (a folder without a model), ``preset/`` of markup-named copies.
    """
    import nibabel as nib
    import numpy as np
    from tapct_vit3d import create_model

    w = tmp_path_factory.mktemp("bad_inputs")
    ct = shared_data / "ct/example_ct_sm.nii.gz"
    (w / "garbage.nii.gz").write_text("this is not a NIfTI file\n")
    (w / "a[").mkdir()  # the path a[/b].nii.gz: rich markup's closing tag [/b]
    (w / "a[/b].nii.gz").write_text("not a NIfTI file, with rich markup in its name\n")
    (w / "trunc.nii.gz").write_bytes(ct.read_bytes()[:20_000])
    (w / "not_gzip.nii.gz").write_bytes(gzip.compress(b"plain text, gzipped"))
    nib.save(nib.Nifti1Image(np.full((8, 32, 32), -1000, np.int16), np.eye(4)), w / "air.nii.gz")
    ref = nib.load(ct)
    nib.save(nib.Nifti1Image(np.zeros(ref.shape, np.uint8), ref.affine), w / "air_mask.nii.gz")
    (w / "empty").mkdir()
    (w / "list.txt").write_text(f"{w / 'gone.nii.gz'}\n{ct}\n")  # one listed scan is gone
    (w / "bad.csv").write_text("name,kind\nx,weird\n")  # a CSV list without a path column
    (w / "afile.txt").write_text("a file, not a folder\n")
    (w / "garbage.pt").write_bytes(b"\x00not a torch checkpoint" * 10)
    (w / "bad.yaml").write_text("name: [unclosed\n  kind: : :\n")
    pair = {"image": str(ct), "label": str(shared_data / "labels/example_ct_sm_seg.nii.gz")}
    task = {"name": "tiny", "kind": "segmentation", "roi_size": [12, 64, 64],
            "num_classes": 118, "train": [pair], "test": [pair]}
    (w / "task.yaml").write_text(json.dumps(task))
    bad_task = {**task, "train": [{"image": str(w / "garbage.nii.gz"),
                                   "label": task["train"][0]["label"]}]}
    (w / "task_bad_image.yaml").write_text(json.dumps(bad_task))
    models = w / "models"
    create_model("tap_nano_3d").save_pretrained(models / "nano")
    shutil.copytree(models / "nano", models / "trunc")
    weights = models / "trunc/model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(models / "nano", models / "bad_config")
    (models / "bad_config/config.json").write_text("{not json")
    (models / "empty").mkdir()
    return w
