"""tapct_eval.label_checks: a label off its image, an image as the label, bad values."""

from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from tapct_eval import (
    LabelCoverWarning,
    LabelError,
    ProbeTrainingConfig,
    TaskFileError,
    check_label_image,
    dice_per_class,
    evaluate_segmentation,
    image_like_problem,
    label_overlap,
    load_label_monai,
    load_task,
    prepare_label,
    train_segmentation_probe,
)
from tapct_eval.segmentation import LinearSegmentationProbe, _masked_dice_ce

# A 10 x 8 x 6 grid of 2 x 1 x 1 mm voxels at (100, -50, 30) mm.
SHAPE = (10, 8, 6)
AFFINE = np.array(
    [[2.0, 0, 0, 100.0], [0, 1.0, 0, -50.0], [0, 0, 1.0, 30.0], [0, 0, 0, 1.0]]
)


def _shifted(d_voxels: float) -> np.ndarray:
    out = AFFINE.copy()
    out[0, 3] += 2.0 * d_voxels  # along D, in mm
    return out


def _box_label() -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.int64)
    label[1:9, 2:6, 1:5] = 1  # 8 x 4 x 4 = 128 voxels
    return label


def test_overlap_counts_big_labels_slab_by_slab(monkeypatch):
    import tapct_eval.label_checks as lc

    label = np.random.default_rng(0).integers(0, 3, size=(10, 8, 6))
    whole = label_overlap(label, _shifted(3), SHAPE, AFFINE)
    monkeypatch.setattr(lc, "_CHUNK_VOXELS", 100)  # 2 slices per slab
    assert label_overlap(label, _shifted(3), SHAPE, AFFINE) == whole
    assert whole.foreground == int((label > 0).sum())
    assert whole.inside == int((label[:7] > 0).sum())  # slices 0..6 land on 3..9


def test_same_grid_is_full_cover():
    found = label_overlap(_box_label(), AFFINE, SHAPE, AFFINE)
    assert (found.foreground, found.inside, found.cover) == (128, 128, 1.0)
    assert found.label_box == found.image_box == ((99.0, 119.0), (-50.5, -42.5), (29.5, 35.5))


@pytest.mark.parametrize("shift", [3, -3, 7])
def test_a_known_translation_gives_the_known_overlap(shift):
    found = label_overlap(_box_label(), _shifted(shift), SHAPE, AFFINE)
    assert found.cover == pytest.approx((10 - abs(shift)) / 10)
    # Label slices d = 1..8 land on image slices d + shift; those in 0..9 are inside.
    inside_slices = sum(1 for d in range(1, 9) if 0 <= d + shift <= 9)
    assert found.inside == inside_slices * 16


def test_a_flipped_and_permuted_grid_of_the_same_box_is_full_cover():
    # The same world box stored W-first with the H axis flipped (e.g. LAS vs LPS).
    label = np.transpose(_box_label(), (2, 1, 0))[:, ::-1, :]  # (W, H, D)
    affine = np.zeros((4, 4))
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = 2.0, -1.0, 1.0, 1.0
    affine[:3, 3] = (100.0, -50.0 + 7, 30.0)
    found = label_overlap(label.copy(), affine, SHAPE, AFFINE)
    assert (found.cover, found.inside, found.foreground) == (pytest.approx(1.0), 128, 128)


def test_check_refuses_a_label_of_another_place():
    with pytest.raises(LabelError, match=r"^lab.nii: none of its 128 foreground voxels lies "
                                         r"inside the image img.nii; its grid covers 0%"):
        check_label_image(_box_label(), _shifted(40), SHAPE, AFFINE,
                          label_path="lab.nii", image_path="img.nii")


def test_check_refuses_a_label_covering_less_than_half():
    with pytest.raises(LabelError, match=r"covers only 40% of the extent of its image img.nii "
                                         r"\(at least 50% needed; 48 of 128"):
        check_label_image(_box_label(), _shifted(6), SHAPE, AFFINE,
                          label_path="lab.nii", image_path="img.nii")


def test_sparse_frames_turn_a_short_cover_into_a_warning_but_not_a_misplaced_label():
    with pytest.warns(LabelCoverWarning, match="covers 40.0% of the extent"):
        check_label_image(_box_label(), _shifted(6), SHAPE, AFFINE, label_path="seg.dcm",
                          image_path="img", sparse_frames=True)
    with pytest.raises(LabelError, match="none of its 128 foreground voxels"):
        check_label_image(_box_label(), _shifted(40), SHAPE, AFFINE, label_path="seg.dcm",
                          image_path="img", sparse_frames=True)


def test_check_warns_once_on_partial_cover_and_is_silent_on_full_cover():
    with pytest.warns(LabelCoverWarning, match=r"^lab.nii: covers 70.0% of the extent") as rec:
        found = check_label_image(_box_label(), _shifted(3), SHAPE, AFFINE,
                                  label_path="lab.nii", image_path="img.nii")
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert found.cover == pytest.approx(0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_label_image(_box_label(), AFFINE, SHAPE, AFFINE,
                          label_path="lab.nii", image_path="img.nii")


def test_label_error_pickles_with_its_path():
    import pickle

    err = pickle.loads(pickle.dumps(LabelError("a/l.nii", "bad")))
    assert (str(err), err.path.name, err.problem) == ("a/l.nii: bad", "l.nii", "bad")


def test_an_empty_label_on_its_grid_is_accepted():
    found = check_label_image(np.zeros(SHAPE, np.int64), AFFINE, SHAPE, AFFINE,
                              label_path="lab.nii", image_path="img.nii")
    assert (found.foreground, found.cover) == (0, 1.0)


def test_image_like_values():
    hu = np.random.default_rng(0).integers(-1024, 2000, size=(4, 32, 32))
    problem = image_like_problem(hu)
    assert problem is not None and "distinct values from -1024" in problem
    assert "CT image in HU" in problem
    assert "not integers (e.g. 0.5)" in image_like_problem(np.array([0.0, 0.5, 2.0]))
    assert image_like_problem(np.arange(118).reshape(2, 59)) is None  # TotalSegmentator ids
    assert image_like_problem(np.array([0, 1, 255, -1])) is None  # bad ids, not an image
    with pytest.raises(LabelError, match=r"lab.nii: holds 3000 distinct values"):
        check_label_image(np.arange(3000).reshape(10, 10, 30), AFFINE, SHAPE, AFFINE,
                          label_path="lab.nii", image_path="img.nii")


def test_real_ct_as_label_is_refused(shared_data):
    hu = nib.load(shared_data / "ct" / "example_ct_sm.nii.gz").get_fdata()
    problem = image_like_problem(hu)
    assert problem is not None and "looks like a CT image in HU" in problem
    seg = nib.load(shared_data / "labels" / "example_ct_sm_seg.nii.gz").get_fdata()
    assert image_like_problem(seg) is None


def test_monai_loader_checks_the_pairing_on_real_scans(shared_data):
    ct, labels = shared_data / "ct", shared_data / "labels"
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelCoverWarning)
        good = load_label_monai(labels / "example_ct_sm_seg.nii.gz", ct / "example_ct_sm.nii.gz")
    assert good.shape == (30, 101, 122) and int(good.max()) == 117
    # The 30-slice label keeps its parent's origin: on the 112-slice parent it covers 27%.
    with pytest.raises(LabelError, match=r"example_ct_sm_seg.nii.gz: covers only 27% of the "
                                         r"extent of its image .*example_ct.nii.gz"):
        load_label_monai(labels / "example_ct_sm_seg.nii.gz", ct / "example_ct.nii.gz")
    with pytest.raises(LabelError, match=r"example_ct_sm.nii.gz: holds .* distinct values"):
        load_label_monai(ct / "example_ct_sm.nii.gz", ct / "example_ct_sm.nii.gz")


def test_prepare_label_refuses_values_outside_the_classes():
    label = torch.tensor([[[0, 1, 255, 1]]])
    with pytest.raises(LabelError, match=r"^l.nii: label values \[255\] are outside 0..1 "
                                         r"\(num_classes 2 of t.yaml\); set ignore_index: 255"):
        prepare_label(label, "l.nii", num_classes=2, task_file="t.yaml")
    with pytest.raises(LabelError, match=r"label values \[-1\] are outside"):
        prepare_label(torch.tensor([[[0, -1]]]), "l.nii", num_classes=2)
    kept = prepare_label(label, "l.nii", num_classes=2, ignore_index=255)
    assert kept.tolist() == label.tolist()
    assert prepare_label(torch.tensor([[[-1, 1]]]), "l.nii", num_classes=2,
                         ignore_index=-1).tolist() == [[[-1, 1]]]


def test_prepare_label_names_the_ids_a_small_num_classes_misses(shared_data):
    seg = torch.from_numpy(
        np.asarray(nib.load(shared_data / "labels" / "example_ct_sm_seg.nii.gz").dataobj)
    )
    ids = sorted(int(v) for v in torch.unique(seg) if v >= 2)
    with pytest.raises(LabelError) as info:
        prepare_label(seg, "seg.nii.gz", num_classes=2, task_file="t.yaml")
    message = str(info.value)
    shown = ", ".join(str(v) for v in ids[:8])
    assert message.startswith(f"seg.nii.gz: label values [{shown}, ... ({len(ids)} values)]")
    assert "check num_classes and label_map" in message and "\n" not in message
    merged = prepare_label(seg, "seg.nii.gz", num_classes=49, label_map="totalsegmentator_49")
    assert int(merged.max()) < 49


def test_prepare_label_keeps_ignored_voxels_through_the_label_map():
    label = torch.tensor([[[0, 5, 255, 3, 2]]])  # 5 = liver, 3 = kidney_left, 2 = kidney_right
    out = prepare_label(label, "l.nii", num_classes=49, label_map="totalsegmentator_49",
                        ignore_index=255)
    assert out.tolist() == [[[0, 7, 255, 2, 2]]]
    with pytest.raises(LabelError, match=r"^l.nii: label values \[7\] are not in label_map "
                                         r"mapping; check label_map, or set ignore_index"):
        prepare_label(torch.tensor([[[0, 7]]]), "l.nii", num_classes=3, label_map={0: 0, 1: 2})
    with pytest.raises(LabelError, match=r"label values \[255\] are not in label_map "
                                         r"totalsegmentator_49; set ignore_index: 255 in the"):
        prepare_label(label, "l.nii", num_classes=49, label_map="totalsegmentator_49")


def test_task_file_ignore_index(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    raw = {"name": "t", "kind": "segmentation", "roi_size": [2, 4, 4], "num_classes": 3,
           "train": [{"image": "a.nii.gz", "label": "a.nii.gz"}],
           "test": [{"image": "a.nii.gz", "label": "a.nii.gz"}]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(raw))
    assert load_task(path).ignore_index is None
    path.write_text(json.dumps({**raw, "ignore_index": 255}))
    assert load_task(path).ignore_index == 255
    for bad in (2, "255", True):
        path.write_text(json.dumps({**raw, "ignore_index": bad}))
        with pytest.raises(TaskFileError, match=r"t.json: key 'ignore_index': must be an int "
                                                r"outside the class ids 0..2"):
            load_task(path)


@pytest.mark.parametrize("bad", [255, -1, 2])
def test_probe_refuses_bad_labels_before_training(bad):
    feats = [torch.randn(4, 2, 2, 2)]
    labels = [torch.zeros(4, 4, 4, dtype=torch.long)]
    labels[0][0, 0, 0] = bad
    with pytest.raises(ValueError, match=rf"labels\[0\] holds values \[{bad}\] outside 0..1"):
        train_segmentation_probe(feats, labels, 2, patch_size=(2, 2, 2))
    with pytest.raises(ValueError, match="ignore_index 1 is a class id"):
        train_segmentation_probe(feats, labels, 2, patch_size=(2, 2, 2), ignore_index=1)


def test_masked_loss_equals_dice_ce_on_the_kept_voxels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 6, 5, 4, generator=g)
    y = torch.randint(0, 3, (6, 5, 4), generator=g)
    y_ignored = y.clone()
    y_ignored[4:] = 255  # the last two slices are left out
    masked = _masked_dice_ce(logits, y_ignored, 255)
    reference = DiceCELoss(to_onehot_y=True, softmax=True)(logits[:, :, :4], y[None, None, :4])
    assert float(masked) == pytest.approx(float(reference), rel=1e-5)
    # Without ignored voxels it is DiceCELoss itself.
    full = DiceCELoss(to_onehot_y=True, softmax=True)(logits, y[None, None])
    assert float(_masked_dice_ce(logits, y, 255)) == pytest.approx(float(full), rel=1e-5)


def test_probe_trains_with_ignore_index_unlike_background():
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(4, 3, 2, 2, generator=g) for _ in range(2)]
    labels = [torch.randint(0, 2, (6, 4, 4), generator=g) for _ in range(2)]
    ignored = [y.index_fill(0, torch.tensor([4, 5]), 255) for y in labels]
    background = [y.index_fill(0, torch.tensor([4, 5]), 0) for y in labels]
    kw = {"patch_size": (2, 2, 2), "seed": 0, "config": ProbeTrainingConfig(steps=5)}
    a = train_segmentation_probe(feats, ignored, 2, ignore_index=255, **kw)
    b = train_segmentation_probe(feats, ignored, 2, ignore_index=255, **kw)
    c = train_segmentation_probe(feats, background, 2, **kw)
    assert torch.equal(a.conv.weight, b.conv.weight)
    assert torch.isfinite(a.conv.weight).all()
    assert not torch.allclose(a.conv.weight, c.conv.weight)


def test_dice_excludes_ignored_voxels():
    probe = LinearSegmentationProbe(1, 2, patch_size=(1, 1, 1))
    with torch.no_grad():
        probe.conv.weight.fill_(1.0)
        probe.conv.bias.copy_(torch.tensor([0.0, 0.0]))
        probe.conv.bias[1] = 0.5  # every voxel predicted class 1 (feature 0)
    feats = torch.zeros(1, 4, 1, 1)
    y = torch.tensor([1, 1, 0, 255]).reshape(4, 1, 1)
    dice = evaluate_segmentation(probe, [feats], [y], ignore_index=255)
    expected = dice_per_class(torch.ones(3, 1, 1, dtype=torch.long), y[:3], 2)
    assert torch.allclose(dice[0], expected) and float(dice[0, 0]) == pytest.approx(0.8)
