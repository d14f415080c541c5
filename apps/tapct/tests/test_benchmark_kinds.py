"""``tapct benchmark`` runs the new task kinds and prints their table (rich lives here)."""

from __future__ import annotations

import json

from rich.console import Console
from tapct_app.benchmark import results_table
from tapct_app.cli import main
from tapct_eval import TOTALSEGMENTATOR_49_CLASSES, BenchmarkResults, summarize_folds

HUMERUS = TOTALSEGMENTATOR_49_CLASSES.index("Humerus")


def test_results_table_names_metric_and_spread():
    res = BenchmarkResults(
        "pairs",
        "m",
        "map",
        summarize_folds([0.5, 1.0]),
        (),
        {"hit@1": summarize_folds([1.0, 0.0])},
        {},
        kind="retrieval",
    )
    console = Console(record=True, width=120)
    console.print(results_table(res))
    text = " ".join(console.export_text().split())  # the title wraps to the table's width
    assert "pairs / m (retrieval): map (mean ± std over query pairs)" in text
    assert "│ map │ 0.750 │ 0.250 │ 2/2 │" in text and "│ hit@1 │ 0.500 │ 0.500 │ 2/2 │" in text


def _liver_task(shared_data, tmp_path, structure=7):
    task = tmp_path / "task.yaml"
    task.write_text(
        "name: liver\nkind: localisation\nroi_size: [8, 64, 64]\noverlap: 0.0\n"
        f"structure: {structure}\nlabel_map: totalsegmentator_49\nin_plane_size: [64, 64]\n"
        "steps: 3\n"
        f"train: [{{image: {shared_data}/ct/example_ct_sm.nii.gz, "
        f"label: {shared_data}/labels/example_ct_sm_seg.nii.gz}}]\n"
        f"test: [{{image: {shared_data}/ct/example_ct_dicom, "
        f"label: {shared_data}/labels/example_ct_dicom_seg.nii.gz}}]\n"
    )
    return task


def test_localisation_benchmark_on_the_labelled_scans(shared_data, tmp_path, capsys):
    """The liver's centroid, example_ct_sm (3 mm) -> the DICOM series (2 x 0.98 mm): the
    spacing comes from the scans and follows the in-plane resize."""
    task = _liver_task(shared_data, tmp_path)
    out = tmp_path / "bench"
    rc = main(
        ["benchmark", str(task), "--model", "tap_nano_3d", "-o", str(out), "--seeds", "0",
         "--device", "cpu"]
    )  # fmt: skip
    assert rc in (0, None)
    printed = " ".join(capsys.readouterr().out.split())
    assert "liver / tap_nano_3d (localisation): error_mm" in printed
    saved = json.loads((out / "results.json").read_text())
    assert saved["kind"] == "localisation" and saved["mean"] > 0
    rows = (out / "predictions.csv").read_text().splitlines()
    target = [float(v) for v in rows[1].split(",")[-1].split()]
    # the liver of the 20-slice DICOM series, in mm on its own 2 x 0.977 x 0.977 mm grid
    assert 0 < target[0] < 20 * 2.0 and 0 < target[1] < 512 * 0.977 and 0 < target[2] < 512
    assert (out / "figures" / "liver_tap_nano_3d_localisation.png").is_file()


def test_a_structure_missing_from_a_case_is_one_line(shared_data, tmp_path, capsys):
    """The humerus is in the DICOM series but not in example_ct_sm's label map."""
    task = _liver_task(shared_data, tmp_path, structure=HUMERUS)
    out = tmp_path / "bench"
    rc = main(
        ["benchmark", str(task), "--model", "tap_nano_3d", "-o", str(out), "--seeds", "0",
         "--device", "cpu"]
    )  # fmt: skip
    assert rc == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("tapct: warn")]
    label = shared_data / "labels/example_ct_sm_seg.nii.gz"
    assert err == [
        f"tapct: error: {label}: the label map holds no voxel of structure {HUMERUS}"
    ]
    assert not out.exists()
