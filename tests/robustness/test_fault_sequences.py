"""Faults that need more than one command line, checked end to end through ``tapct``.

The single-command cases are the table of ``test_bad_inputs.py``; here: a store left
unfinished by ``preprocess`` and then read, two runs of ``embed`` into one folder, scan
names that would clash, a foreign or empty zarr store given to the readers, and the
values that used to be silently wrong (DICOM padding read as bone, Sinkhorn-Knopp rows of
zero). Each of these was fixed once in the library; these tests pin the CLI's view.
"""

from __future__ import annotations

import json
import shutil

import pytest
from tapct_app.cli import main


def _run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    return rc, cap.out, cap.err


def test_unfinished_store_is_kept_and_every_reader_warns(shared_data, tmp_path, capsys):
    """preprocess --on-error stop keeps the scans done before the stop (resumable) and marks
    the store unfinished; fingerprint and embed warn when they read it; a rerun finishes it."""
    good = shared_data / "ct/example_ct_sm.nii.gz"
    bad = shared_data / "robustness/image_2d.mha"
    store = tmp_path / "s[1].zarr"
    args = ["preprocess", good, bad, "-o", store, "--workers", "1"]
    rc, _, err = _run(capsys, *args, "--on-error", "stop")
    assert rc == 2 and err.count("tapct: error:") == 1 and f"{bad}: 2D image" in err
    assert (store / "_incomplete").is_file() and (store / "example_ct_sm/zarr.json").is_file()
    rc, out, err = _run(capsys, "fingerprint", store, "--workers", "1")
    assert rc == 0 and "fingerprint of 1 scan(s)" in out
    assert f"tapct: warning: {store}: not finished by `tapct preprocess`" in err
    assert "only its 1 complete scan(s)" in err
    rc, out, _ = _run(capsys, *args)  # the same command without stop: finishes the store
    assert rc == 0 and "1 skipped" in out and not (store / "_incomplete").exists()
    from tapct_data import IncompleteStoreWarning, ZarrVolumeStore

    with pytest.warns(IncompleteStoreWarning):  # a store killed mid-build reads the same way
        (store / "_incomplete").write_text("{}")
        assert not ZarrVolumeStore(store).complete


def test_two_embed_runs_into_one_folder_merge_the_manifest(shared_data, bad_workspace,
                                                            tmp_path, capsys):
    out = tmp_path / "emb"
    common = ["-o", out, "--no-pca", "-m", bad_workspace / "models/nano", "--device", "cpu"]
    assert _run(capsys, "embed", shared_data / "ct/example_ct_sm.nii.gz", *common)[0] == 0
    assert _run(capsys, "embed", shared_data / "robustness/enhanced_ct_multiframe.dcm",
                *common)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["scans"]] == ["enhanced_ct_multiframe", "example_ct_sm"]


def test_clashing_scan_names_are_refused_before_anything_is_written(shared_data, tmp_path,
                                                                     capsys):
    """d1/a.nii.gz, d2/a.nii.gz and a_1.nii.gz: three scans, never two under one name."""
    src = shared_data / "ct/example_ct_sm.nii.gz"
    for rel in ("d1/a.nii.gz", "d2/a.nii.gz", "a_1.nii.gz"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp_path / rel)  # copies: symlinks to one file are one scan
    store = tmp_path / "s.zarr"
    rc, out, err = _run(capsys, "preprocess", tmp_path / "d1/a.nii.gz", tmp_path / "d2/a.nii.gz",
                        tmp_path / "a_1.nii.gz", "-o", store, "--workers", "1")
    if rc == 0:  # named apart: all three kept
        index = json.loads((store / "index.json").read_text())
        assert len(index["scans"]) == 3, index
    else:
        assert rc == 2 and err.count("tapct: error:") == 1 and "scan name" in err
        assert not store.exists()
    rc, out, _ = _run(capsys, "preprocess", tmp_path, "-o", tmp_path / "t.zarr", "--workers",
                      "1")  # one folder: names from the relative paths, all distinct
    assert rc == 0 and out.strip().splitlines()[-1].startswith("3 scans written")


@pytest.mark.parametrize("kind", ["empty", "foreign"])
def test_empty_or_foreign_zarr_store_is_one_line(kind, bad_workspace, tmp_path, capsys):
    import zarr

    store = tmp_path / f"{kind}.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    if kind == "empty":
        from tapct_data.store import FORMAT_VERSION

        group.attrs["format_version"] = FORMAT_VERSION
    else:
        group.create_array("x", shape=(2, 2), dtype="int16")
    for argv in (["embed", store, "-o", tmp_path / "e", "--no-pca", "-m",
                  bad_workspace / "models/nano", "--device", "cpu"],
                 ["fingerprint", store, "--workers", "1"]):
        rc, _, err = _run(capsys, *argv)
        assert rc == 2 and err.count("tapct: error:") == 1 and str(store) in err, err
        assert not (tmp_path / "e").exists()


def test_dicom_padding_is_air_in_the_store(shared_data, tmp_path, capsys):
    """PixelPaddingValue -2000 of ct_3slice_dicom: stored as air (-1024 HU), never -3024."""
    import numpy as np
    from tapct_data import AIR_HU, ZarrVolumeStore

    store = tmp_path / "p.zarr"
    rc, _, _ = _run(capsys, "preprocess", shared_data / "ct/ct_3slice_dicom", "-o", store,
                    "--workers", "1")
    assert rc == 0
    s = ZarrVolumeStore(store)
    (name,) = s.names
    data = s.read(name).data.numpy()
    assert float(data.min()) == AIR_HU and np.mean(data == AIR_HU) > 0.01


def test_sinkhorn_knopp_rows_sum_to_one_for_a_far_sample():
    """Teacher temperature 0.04, one sample's logits 6 above the rest (dinov2#360)."""
    import torch
    from tapct_ssl import DINOLoss

    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(8))
    z[0] += 6.0
    q = DINOLoss(16).sinkhorn_knopp_teacher(z, 0.04)
    torch.testing.assert_close(q.sum(1), torch.ones(8))
