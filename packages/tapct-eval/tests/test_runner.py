"""Task files and the benchmark runner on small synthetic NIfTI tasks."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from tapct_eval import TaskFileError, load_task, run_benchmark


def _write_case(folder, name, seed):
    g = np.random.default_rng(seed)
    labels = np.zeros((16, 16, 8), dtype=np.int16)  # NIfTI (x, y, z)
    labels[4:12, 4:12, 2:6] = 1
    hu = np.where(labels > 0, 300.0, -800.0) + g.normal(0, 10, labels.shape)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    (folder / "images").mkdir(exist_ok=True)
    (folder / "labels").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(hu.astype(np.float32), affine), folder / "images" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), folder / "labels" / f"{name}.nii.gz")


@pytest.fixture
def seg_task(tmp_path):
    for split, names in (("train", ["a", "b"]), ("test", ["c"])):
        folder = tmp_path / split
        folder.mkdir()
        for i, name in enumerate(names):
            _write_case(folder, name, i + (10 if split == "test" else 0))
    task = {
        "name": "box",
        "kind": "segmentation",
        "roi_size": [4, 8, 8],
        "overlap": 0.0,
        "num_classes": 2,
        "class_names": ["background", "box"],
        "steps": 40,
        "lr": 0.2,
        "train": {"images": "train/images", "labels": "train/labels"},
        "test": [{"image": "test/images/c.nii.gz", "label": "test/labels/c.nii.gz"}],
    }
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    return path


def test_load_task_resolves_cases(seg_task):
    task = load_task(seg_task)
    assert task.kind == "segmentation" and task.roi_size == (4, 8, 8)
    assert [c.case_id for c in task.train] == ["a", "b"]
    assert task.test[0].label.name == "c.nii.gz"
    assert task.accumulation_steps == 4


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"kind": "report_generation"}, "kind"),
        ({"roi_size": [4, 8]}, "roi_size"),
        ({"overlap": 1.5}, "overlap"),
        ({"train": {"images": "nope", "labels": "x"}}, "train.images"),
        ({"label_map": "other"}, "label_map"),
        ({"blend_mode": "max"}, "blend_mode"),
        ({"sigma_scale": 0}, "sigma_scale"),
    ],
)
def test_task_errors_name_file_and_key(seg_task, tmp_path, change, key):
    raw = json.loads(seg_task.read_text())
    raw.update(change)
    bad = tmp_path / "bad.yaml"
    import yaml

    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(TaskFileError, match=rf"bad.yaml: key '{key}'"):
        load_task(bad)
    raw.pop("name")
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(TaskFileError, match="key 'name': is required"):
        load_task(bad)


# The paper's statistics (TAP-CT Appendix B), as the app passes them from NormalizeConfig.
PAPER_STATS = (-1008.0, 822.0, -86.8086, 322.6347)


def test_run_benchmark_segmentation(seg_task, tmp_path, local_backbone):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="intensity"):
        run_benchmark(seg_task, local_backbone, out, seeds=(0,))
    res = run_benchmark(
        seg_task, local_backbone, out, seeds=(0, 1), model_name="local", intensity=PAPER_STATS
    )
    assert res.metric == "dice" and len(res.per_seed) == 2
    # the numbers of the runner before the kinds moved onto TASK_KINDS (same seeds)
    assert res.per_seed == pytest.approx([0.9739478826522827, 0.9253731369972229], abs=1e-5)
    assert res.summary.mean > 0.8
    assert set(res.per_class) == {"box"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["mean"] == pytest.approx(res.summary.mean)
    assert (out / "results.csv").read_text().startswith("task,model,class,metric")
    for name in ("overlay", "retrieval"):
        assert res.files[name].read_bytes()[:4] == b"\x89PNG"
    cached = sorted((out / "features" / "local" / "box").glob("*.pt"))
    assert [p.stem for p in cached] == ["a", "b", "c"]
    # a second run reuses the cache (same features, same results)
    again = run_benchmark(
        seg_task, local_backbone, out, seeds=(0, 1), model_name="local", intensity=PAPER_STATS
    )
    assert again.per_seed == res.per_seed


def test_run_benchmark_classification_with_injected_loader(tmp_path, local_backbone):
    rows = ["image,split,label"]
    for i in range(12):
        rows.append(f"case{i}.npy,{'train' if i < 8 else 'test'},{i % 2}")
    (tmp_path / "cases.csv").write_text("\n".join(rows))
    (tmp_path / "task.yaml").write_text(
        "name: cls\nkind: classification\nroi_size: [4, 8, 8]\nnum_classes: 1\n"
        "csv: cases.csv\nsteps: 20\naccumulation_steps: 4\nlr: 0.01\n"
    )

    def load_image(path):
        i = int(path.stem[4:])
        g = torch.Generator().manual_seed(i)
        return torch.randn(1, 8, 16, 16, generator=g) * 0.1 + (1.0 if i % 2 else -1.0)

    res = run_benchmark(
        tmp_path / "task.yaml", local_backbone, tmp_path / "out", seeds=(0,), load_image=load_image
    )
    assert res.metric == "auc"
    assert res.summary.mean == pytest.approx(1.0)
    assert "micro_ap" in res.per_class


def test_classification_numbers_unchanged_on_the_registry(tmp_path, tiny_vit):
    """Noisy classes, 3 seeds: the per-seed AUC and AP of the runner before TASK_KINDS."""
    rows = ["image,split,label"]
    for i in range(16):
        rows.append(f"case{i}.npy,{'train' if i < 10 else 'test'},{i % 2}")
    (tmp_path / "cases.csv").write_text("\n".join(rows))
    (tmp_path / "task.yaml").write_text(
        "name: cls\nkind: classification\nroi_size: [4, 8, 8]\nnum_classes: 1\n"
        "csv: cases.csv\nsteps: 20\naccumulation_steps: 4\nlr: 0.01\n"
    )

    def load_image(path):
        i = int(path.stem[4:])
        g = torch.Generator().manual_seed(i)
        return (
            torch.randn(1, 8, 16, 16, generator=g) * 0.1
            + (0.05 if i % 2 else -0.05)
            + torch.randn(1, 8, 16, 16, generator=g)
        )

    res = run_benchmark(
        tmp_path / "task.yaml", tiny_vit, tmp_path / "out", seeds=(0, 1, 2), load_image=load_image
    )
    assert res.kind == "classification"
    assert res.per_seed == pytest.approx([7 / 9, 1 / 3, 2 / 3], abs=1e-6)
    assert res.per_class["micro_ap"].mean == pytest.approx(0.687037037037037, abs=1e-5)
    assert res.per_class["micro_ap"].std == pytest.approx(0.13382112418621975, abs=1e-5)


def test_run_benchmark_takes_the_encoders_preprocessing(seg_task, tmp_path, local_backbone):
    """An encoder's HU window, in-plane size and fixed window axes drive the run."""
    from tapct_eval.encoders import BackboneEncoder, Preprocessing, hu_window

    prep = Preprocessing(
        intensity=hu_window(-1000, 1000), in_plane_size=(8, 8), window_size=(None, 8, 8)
    )
    encoder = BackboneEncoder(local_backbone, prep)
    out = tmp_path / "out"
    res = run_benchmark(seg_task, encoder, out, seeds=(0,), model_name="enc:x", figures=False)
    assert res.metric == "dice" and 0.0 <= res.summary.mean <= 1.0
    cached = torch.load(out / "features" / "enc_x" / "box" / "c.pt", weights_only=True)
    assert tuple(cached["patch_features"].shape) == (8, 4, 2, 2)  # (E, 8/2, 8/4, 8/4)
    assert json.loads(bytes(cached["key"].tolist()).decode())["roi_size"] == [4, 8, 8]
