"""The four new task kinds on data built with a known answer; metrics against their libraries."""

from __future__ import annotations

import csv
import json
import re
from itertools import combinations

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.distance import euclidean
from scipy.stats import pearsonr
from sklearn.metrics import average_precision_score, mean_absolute_error
from tapct_eval import (
    TASK_KINDS,
    RetrievalCase,
    SurvivalCase,
    TaskFileError,
    load_task,
    run_benchmark,
)
from tapct_eval.kinds.survival import concordance_index, cox_loss

PAPER_STATS = (-1008.0, 822.0, -86.8086, 322.6347)


def _predictions(res, seed):
    rows = [p for p in res.predictions if p.seed == seed]
    return np.array([p.prediction for p in rows]), np.array([p.target for p in rows])


def test_registry_holds_six_kinds(tmp_path):
    assert list(TASK_KINDS) == [
        "segmentation",
        "classification",
        "regression",
        "survival",
        "retrieval",
        "localisation",
    ]
    (tmp_path / "t.yaml").write_text("name: x\nkind: report\nroi_size: [4, 8, 8]\n")
    with pytest.raises(TaskFileError, match=r"key 'kind': must be one of segmentation, "):
        load_task(tmp_path / "t.yaml")
    (tmp_path / "t.yaml").write_text("name: x\nkind: survival\nroi_size: [4, 8, 8]\n")
    with pytest.raises(TaskFileError, match="key 'csv': is required for survival"):
        load_task(tmp_path / "t.yaml")


# ------------------------------------------------------------------ regression


@pytest.mark.parametrize("head", ["linear", "abmil"])
def test_regression_recovers_organ_volume(tmp_path, local_backbone, head):
    """Target = the box's volume in ml from the label map; a linear head on mean-pooled
    tokens recovers it (the patch embedding is linear in the voxels); ABMIL less well."""
    g = np.random.default_rng(0)
    images, rows = {}, []
    voxel_ml = 2.0 * 1.0 * 1.0 / 1000  # (2, 1, 1) mm voxels
    for i in range(24):
        label = torch.zeros(8, 16, 16)
        dz, dy, dx = g.integers(2, 7), g.integers(3, 13), g.integers(3, 13)
        z, y, x = g.integers(0, 8 - dz + 1), g.integers(0, 16 - dy + 1), g.integers(0, 16 - dx + 1)
        label[z : z + dz, y : y + dy, x : x + dx] = 1
        noise = torch.from_numpy(g.normal(0, 0.05, (1, 8, 16, 16))).float()
        images[f"case{i}"] = torch.where(label > 0, 1.0, -1.0)[None] + noise
        volume = float(label.sum()) * voxel_ml
        rows.append(f"case{i}.nii.gz,{'train' if i < 16 else 'test'},{volume}")
    (tmp_path / "cases.csv").write_text("image,split,volume_ml\n" + "\n".join(rows))
    (tmp_path / "task.yaml").write_text(
        "name: vol\nkind: regression\nroi_size: [4, 8, 8]\noverlap: 0.0\ncsv: cases.csv\n"
        f"target_columns: [volume_ml]\nhead: {head}\nsteps: 150\naccumulation_steps: 4\n"
        f"lr: {0.05 if head == 'linear' else 0.01}\n"
    )
    res = run_benchmark(
        tmp_path / "task.yaml",
        local_backbone,
        tmp_path / "out",
        seeds=(0, 1, 2),
        load_image=lambda p: images[p.name.split(".")[0]],
    )
    assert res.kind == "regression" and res.metric == "mae" and len(res.per_seed) == 3
    truth = np.array([float(r.split(",")[2]) for r in rows[16:]])
    for k, seed in enumerate((0, 1, 2)):
        pred, target = _predictions(res, seed)
        np.testing.assert_allclose(target[:, 0], truth)
        assert res.per_seed[k] == pytest.approx(mean_absolute_error(target, pred))
    assert res.per_class["pearson_r"].mean == pytest.approx(
        np.mean([pearsonr(*_predictions(res, s)[::-1]).statistic.item() for s in (0, 1, 2)])
    )
    # linear: r 0.997, MAE 0.03 ml; ABMIL (its attention weighs the windows, while the
    # volume is their sum): r 0.89, MAE 0.12 ml; predicting the mean: MAE 0.25 ml
    min_r, max_mae = (0.97, 0.25) if head == "linear" else (0.8, 0.6)
    assert res.per_class["pearson_r"].mean > min_r
    assert res.summary.mean < max_mae * np.abs(truth - truth.mean()).mean()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["kind"] == "regression" and saved["mean"] == pytest.approx(res.summary.mean)
    with (tmp_path / "out" / "predictions.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 8
    assert res.files["scatter"].read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ survival


def _harrell(risk, event, time):
    """Harrell's C by counting the comparable pairs (no tied times here)."""
    num = den = 0.0
    for i, j in combinations(range(len(time)), 2):
        a, b = (i, j) if time[i] < time[j] else (j, i)
        if event[a]:
            den += 1
            num += 1.0 if risk[a] > risk[b] else 0.5 if risk[a] == risk[b] else 0.0
    return num / den


def test_cox_loss_and_c_index_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    log_hz = torch.randn(12, generator=g)
    time = torch.rand(12, generator=g) * 10 + 0.1
    event = torch.rand(12, generator=g) > 0.3
    # Cox partial likelihood (no ties): -sum_events [h_i - log sum_{t_j >= t_i} e^{h_j}] / #events
    terms = [
        log_hz[i] - torch.logsumexp(log_hz[time >= time[i]], 0) for i in range(12) if event[i]
    ]
    assert float(cox_loss(log_hz, event, time)) == pytest.approx(
        -float(torch.stack(terms).mean()), rel=1e-5
    )
    assert concordance_index(log_hz, event, time) == pytest.approx(
        _harrell(log_hz.tolist(), event.tolist(), time.tolist()), abs=1e-6
    )


def test_survival_from_a_known_hazard(tmp_path, local_backbone):
    """Times drawn from h(t | x) = exp(2 x) with x the image's intensity; the fitted
    model's C-index is close to the true risk's, and equals torchsurv's on its outputs."""
    g = np.random.default_rng(1)
    n_train, n_test = 48, 32
    x = g.uniform(-1, 1, n_train + n_test)
    t_event = g.exponential(1 / np.exp(2 * x))
    t_censor = g.exponential(2.0, len(x))
    time, event = np.minimum(t_event, t_censor) + 1e-3, (t_event <= t_censor).astype(int)
    images = {
        f"case{i}": torch.full((1, 4, 8, 8), float(x[i]))
        + torch.from_numpy(g.normal(0, 0.02, (1, 4, 8, 8))).float()
        for i in range(len(x))
    }
    rows = [
        f"case{i}.nii.gz,{'train' if i < n_train else 'test'},{time[i]},{event[i]}"
        for i in range(len(x))
    ]
    (tmp_path / "cases.csv").write_text("image,split,time,event\n" + "\n".join(rows))
    (tmp_path / "task.yaml").write_text(
        "name: surv\nkind: survival\nroi_size: [4, 8, 8]\ncsv: cases.csv\nsteps: 60\n"
        "accumulation_steps: 16\nlr: 0.01\n"
    )
    res = run_benchmark(
        tmp_path / "task.yaml",
        local_backbone,
        tmp_path / "out",
        seeds=(0, 1, 2),
        load_image=lambda p: images[p.name.split(".")[0]],
    )
    assert res.kind == "survival" and res.metric == "c_index"
    test = slice(n_train, None)
    oracle = _harrell(2 * x[test], event[test], time[test])
    assert oracle > 0.7
    for k, seed in enumerate((0, 1, 2)):
        risk, target = _predictions(res, seed)
        np.testing.assert_allclose(target[:, 0], time[test])
        lib = concordance_index(risk[:, 0], target[:, 1].astype(bool), target[:, 0])
        assert res.per_seed[k] == pytest.approx(lib, abs=1e-6)
        assert res.per_seed[k] == pytest.approx(_harrell(risk[:, 0], event[test], time[test]))
    assert res.summary.mean > oracle - 0.05
    assert res.files["risk"].read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ retrieval


def test_retrieval_of_a_shifted_real_scan(shared_data, tmp_path, local_backbone):
    """Follow-up = the scan moved by a known integer shift (a multiple of the patch): the
    lesion's patches reappear at the shifted place with the same features."""
    ct = nib.load(shared_data / "ct/example_ct_sm.nii.gz")
    seg = nib.load(shared_data / "labels/example_ct_sm_seg.nii.gz")
    hu = np.asarray(ct.dataobj, dtype=np.float32)  # (x, y, z)
    organs = np.asarray(seg.dataobj).astype(np.int16)
    cx, cy = hu.shape[0] // 2, hu.shape[1] // 2
    box = np.s_[cx - 32 : cx + 32, cy - 32 : cy + 32, 8:24]  # (64, 64, 16) voxels of 3 mm
    hu, organs = hu[box], organs[box]
    shift = (4, 8, 2)  # voxels along x, y, z: (1, 2, 1) patches of (w 4, h 4, d 2)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])

    def moved(a, fill):
        out = np.full_like(a, fill)
        out[shift[0] :, shift[1] :, shift[2] :] = a[: -shift[0], : -shift[1], : -shift[2]]
        return out

    def save(name, array):
        nib.save(nib.Nifti1Image(array, affine), tmp_path / name)
        return name

    # lesion 1: one patch-aligned block of tissue; lesion 2: the largest organ in the crop
    block = np.zeros_like(organs)
    block[28:32, 28:32, 6:8] = 1
    assert hu[28:32, 28:32, 6:8].mean() > -200  # soft tissue, not air
    ids, counts = np.unique(organs[organs > 0], return_counts=True)
    organ = (organs == ids[counts.argmax()]).astype(np.int16)
    pairs = []
    for name, mask in (("block", block), ("organ", organ)):
        pairs.append(
            {
                "id": name,
                "query": save("base.nii.gz", hu),
                "query_label": save(f"{name}_base.nii.gz", mask),
                "target": save("followup.nii.gz", moved(hu, -1024.0)),
                "target_label": save(f"{name}_fu.nii.gz", moved(mask, 0)),
            }
        )
    (tmp_path / "task.json").write_text(
        json.dumps(
            {
                "name": "shift",
                "kind": "retrieval",
                "roi_size": [8, 32, 32],
                "overlap": 0.0,
                "pairs": pairs,
                "top_k": [1, 5],
            }
        )
    )
    res = run_benchmark(
        tmp_path / "task.json",
        local_backbone,
        tmp_path / "out",
        seeds=(0, 1, 2),
        intensity=PAPER_STATS,
    )
    assert res.kind == "retrieval" and res.metric == "map" and res.per_seed == ()
    by_id = {p.case_id: p for p in res.predictions}
    # the single-patch lesion: its exact copy is the best match and the only true patch
    assert by_id["block"].prediction == pytest.approx((1.0, 1.0))
    assert by_id["block"].target == (1.0,)
    assert by_id["organ"].prediction[1] == 1.0  # the organ's best match lies in the organ
    assert res.per_class["hit@1"].mean == 1.0
    # AP against scikit-learn, recomputed from the features the runner cached
    from tapct_eval import masked_patch_features, retrieve_patches
    from tapct_eval.kinds.base import patch_mask

    cache = tmp_path / "out" / "features" / "LocalBackbone" / "shift"
    query = torch.load(cache / "organ.query.pt", weights_only=True)["patch_features"]
    target = torch.load(cache / "organ.target.pt", weights_only=True)["patch_features"]
    label_q = torch.from_numpy(organ.transpose(2, 1, 0).copy()).flip(1, 2)  # LPS (z, y, x)
    label_t = torch.from_numpy(moved(organ, 0).transpose(2, 1, 0).copy()).flip(1, 2)
    mask = patch_mask(label_q, None, (2, 4, 4), tuple(query.shape[1:]))
    relevant = patch_mask(label_t, None, (2, 4, 4), tuple(target.shape[1:]), threshold=0)
    sim = retrieve_patches(masked_patch_features(query, mask), target).similarity
    ap = average_precision_score(relevant.flatten().numpy(), sim.flatten().numpy())
    assert by_id["organ"].prediction[0] == pytest.approx(ap)
    assert res.summary.mean == pytest.approx((1.0 + ap) / 2)
    assert res.files["retrieval"].read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------ localisation


def test_localisation_of_a_box_centroid(tmp_path, local_backbone):
    """The bright box's centroid (mm) from patch features via heat map + soft-argmax."""
    g = np.random.default_rng(2)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # (x, y, z) mm: loaded (D, H, W) = (2, 1, 1) mm
    cases = {"train": [], "test": []}
    for i in range(16):
        split = "train" if i < 12 else "test"
        label = np.zeros((32, 32, 8), dtype=np.int16)
        x, y, z = g.integers(0, 24), g.integers(0, 24), g.integers(0, 6)
        label[x : x + 8, y : y + 8, z : z + 2] = 1
        hu = np.where(label > 0, 300.0, -800.0) + g.normal(0, 10, label.shape)
        for kind, array in (("img", hu.astype(np.float32)), ("seg", label)):
            nib.save(nib.Nifti1Image(array, affine), tmp_path / f"{kind}{i}.nii.gz")
        cases[split].append({"image": f"img{i}.nii.gz", "label": f"seg{i}.nii.gz"})
    task = {
        "name": "box",
        "kind": "localisation",
        "roi_size": [4, 16, 16],
        "overlap": 0.0,
        "structure": 1,
        "spacing": [2.0, 1.0, 1.0],
        "steps": 80,
        "accumulation_steps": 4,
        "lr": 0.05,
        **cases,
    }
    (tmp_path / "task.json").write_text(json.dumps(task))
    res = run_benchmark(
        tmp_path / "task.json",
        local_backbone,
        tmp_path / "out",
        seeds=(0, 1, 2),
        intensity=PAPER_STATS,
    )
    assert res.kind == "localisation" and res.metric == "error_mm"
    for k, seed in enumerate((0, 1, 2)):
        pred, target = _predictions(res, seed)
        assert res.per_seed[k] == pytest.approx(
            np.mean([euclidean(p, t) for p, t in zip(pred, target, strict=True)]), rel=1e-5
        )
    # the truth is the box centre: (z + 0.5) * 2 mm etc. (in the LPS-loaded frame)
    _, target = _predictions(res, 0)
    assert sorted(target[:, 0] % 2) == [1.0] * 4  # z centre of a 2-slice box, 2 mm slices
    per_axis = np.mean(
        [
            mean_absolute_error(*_predictions(res, s)[::-1], multioutput="raw_values")
            for s in (0, 1, 2)
        ],
        axis=0,
    )
    assert per_axis == pytest.approx([res.per_class[f"mae_{a}_mm"].mean for a in "zyx"])
    guess = np.linalg.norm(target - target.mean(0), axis=1).mean()  # predicting the mean
    assert res.summary.mean < 3.0 < guess
    assert res.files["localisation"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("kind", "extra", "csv_text", "key", "needle"),
    [
        ("regression", {"head": "mlp"}, "image,split,target\na,train,1\nb,test,2", "head", "or"),
        ("regression", {}, "image,split,target\na,train,x\nb,test,2", "csv", "line 2"),
        ("survival", {}, "image,split,time,event\na,train,1,2\nb,test,2,1", "csv", "event"),
        ("survival", {}, "image,split,time,event\na,train,1,0\nb,test,2,1", "csv", "no event"),
        ("survival", {}, "image,split,time,event\na,train,-1,1\nb,test,2,1", "csv", "> 0"),
        ("retrieval", {"pairs": [{"query": "a.nii.gz"}]}, None, "pairs[0]", "needs query"),
        ("retrieval", {"pairs": [], "top_k": [0]}, None, "pairs", "non-empty"),
        ("localisation", {"train": [], "test": []}, None, "structure", "is required"),
        ("localisation", {"structure": 0}, None, "structure", "positive label id"),
        ("localisation", {"structure": 1, "spacing": [1, 1]}, None, "spacing", "3 positive"),
    ],
)
def test_new_kinds_task_errors_name_file_and_key(tmp_path, kind, extra, csv_text, key, needle):
    raw = {"name": "t", "kind": kind, "roi_size": [4, 8, 8], **extra}
    if csv_text is not None:
        (tmp_path / "cases.csv").write_text(csv_text)
        raw["csv"] = "cases.csv"
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(TaskFileError, match=rf"bad.json: key '{re.escape(key)}': .*{needle}"):
        load_task(tmp_path / "bad.json")


def test_new_kinds_parse_their_records(tmp_path):
    (tmp_path / "cases.csv").write_text("image,split,t,e\na.nii.gz,train,3.5,1\nb.nii.gz,test,2,0")
    (tmp_path / "s.yaml").write_text(
        "name: s\nkind: survival\nroi_size: [4, 8, 8]\ncsv: cases.csv\ntime_column: t\n"
        "event_column: e\n"
    )
    task = load_task(tmp_path / "s.yaml")
    assert task.train[0] == SurvivalCase("a", tmp_path / "a.nii.gz", 3.5, True)
    assert task.test[0].event is False and task.accumulation_steps == 16
    for name in ("q", "ql", "f", "fl"):
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    (tmp_path / "r.yaml").write_text(
        "name: r\nkind: retrieval\nroi_size: [4, 8, 8]\nlabel_value: 2\ntop_k: [5, 1]\n"
        "pairs: [{query: q.nii.gz, query_label: ql.nii.gz, target: f.nii.gz, "
        "target_label: fl.nii.gz}]\n"
    )
    task = load_task(tmp_path / "r.yaml")
    assert task.train == () and task.top_k == (1, 5) and task.label_value == 2
    assert task.test[0] == RetrievalCase(
        "q", *(tmp_path / f"{n}.nii.gz" for n in ("q", "ql", "f", "fl"))
    )
