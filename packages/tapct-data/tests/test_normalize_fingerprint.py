"""NormalizeConfig / ClipNormalize and the dataset fingerprint (body-mask foreground)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torchio as tio
from scipy import ndimage
from tapct_data import (
    ClipNormalize,
    NormalizeConfig,
    Volume,
    body_mask,
    compute_fingerprint,
    compute_foreground_stats,
    read_volume,
)
from tapct_data.phantom import make_phantom

# Golden values: TAP-CT Appendix B (clip [-1008, 822] HU, mean -86.8086, std 322.6347).
PAPER = (-1008.0, 822.0, -86.8086, 322.6347)


def test_normalize_config_defaults_are_the_paper_values_and_validate():
    cfg = NormalizeConfig()
    assert (cfg.lower, cfg.upper, cfg.mean, cfg.std) == PAPER
    assert NormalizeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="std"):
        NormalizeConfig(std=0.0)
    with pytest.raises(ValueError, match="below upper"):
        NormalizeConfig(lower=100.0, upper=100.0)
    with pytest.raises(ValueError, match="finite"):
        NormalizeConfig(mean=float("nan"))


def test_clip_normalize_tensor_volume_and_torchio():
    norm = ClipNormalize()
    hu = torch.tensor([-3000.0, -1008.0, -86.8086, 822.0, 3000.0])
    expected = (torch.tensor([-1008.0, -1008.0, -86.8086, 822.0, 822.0]) + 86.8086) / 322.6347
    assert torch.allclose(norm(hu), expected)
    subject = tio.Subject(image=tio.ScalarImage(tensor=hu.view(1, 5, 1, 1)))
    assert torch.allclose(norm(subject).image.data.flatten(), expected)
    vol = Volume(hu.view(1, 5, 1, 1), (1, 1, 1), np.eye(4))
    assert torch.allclose(norm(vol).data.flatten(), expected)
    custom = ClipNormalize(NormalizeConfig(-1000.0, 1000.0, 0.0, 500.0))
    assert custom(torch.tensor([2000.0])).item() == pytest.approx(2.0)
    assert ClipNormalize(std=100.0).config == NormalizeConfig(std=100.0)  # old keywords
    with pytest.raises(ValueError, match="std"):
        ClipNormalize(std=0.0)
    with pytest.raises(TypeError, match="unknown"):
        ClipNormalize(scale=2.0)


def test_from_json_round_trip_and_bad_files(tmp_path):
    cfg = NormalizeConfig(-1000.0, 900.0, -50.0, 300.0)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(cfg.to_dict()))
    assert NormalizeConfig.from_json(plain) == cfg
    fp = compute_fingerprint([make_phantom((8, 32, 32), seed=0)[0]], samples_per_scan=500)
    saved = fp.save_json(tmp_path / "sub" / "stats.json")
    assert NormalizeConfig.from_json(saved) == fp.normalize
    cases = {
        "missing.json": None,
        "broken.json": "{not json",
        "nokey.json": json.dumps({"lower": -1, "upper": 1, "mean": 0}),
        "extra.json": json.dumps({**cfg.to_dict(), "scale": 2}),
        "text.json": json.dumps({**cfg.to_dict(), "std": "big"}),
        "zero.json": json.dumps({**cfg.to_dict(), "std": 0}),
        "list.json": json.dumps([1, 2, 3, 4]),
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(name)) as info:
            NormalizeConfig.from_json(path)
        assert "\n" not in str(info.value)


def _independent_body(x: np.ndarray) -> np.ndarray:
    """The body mask written out again: largest component > -500 HU, filled per slice."""
    labels, _ = ndimage.label(x > -500)
    body = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return np.stack([ndimage.binary_fill_holes(s) for s in body])


def test_fingerprint_of_a_real_chest_ct_reaches_the_lungs(shared_data):
    path = shared_data / "ct/example_ct.nii.gz"
    fp = compute_fingerprint([path], samples_per_scan=20_000)
    x = read_volume(path).data[0].numpy()
    body = _independent_body(x)
    np.testing.assert_array_equal(body_mask(x), body)
    fg = x[body].astype(np.float64)
    stats = fp.foreground
    assert stats.lower < -900  # lungs included (a 3D fill gives about -620)
    lo, med, hi = np.percentile(fg, [0.5, 50, 99.5])
    assert stats.lower == pytest.approx(lo, abs=15)
    assert stats.upper == pytest.approx(hi, abs=25)
    assert stats.median == pytest.approx(med, abs=10)
    assert stats.mean == pytest.approx(fg.mean(), rel=1e-9)
    assert stats.std == pytest.approx(fg.std(), rel=1e-6)
    assert stats.n_voxels == fg.size and fp.n_scans == 1
    assert fp.spacing["median"] == pytest.approx([3.0, 3.0, 3.0])
    assert fp.shape["median"] == list(x.shape)
    assert compute_foreground_stats([path], samples_per_scan=20_000) == stats


def test_fingerprint_is_seeded_and_independent_of_workers(shared_data, tmp_path):
    bad = tmp_path / "fake.nii.gz"
    bad.write_text("not a nifti")
    sources = [shared_data / "ct/example_ct_sm.nii.gz", bad, shared_data / "ct/example_ct.nii.gz"]
    one = compute_fingerprint(sources, samples_per_scan=2000, seed=3)
    two = compute_fingerprint(sources, samples_per_scan=2000, seed=3, workers=2)
    assert one.to_dict() == two.to_dict()
    assert one.n_scans == 2 and [s.path for s in one.skipped] == [str(bad)]
    assert one.skipped[0].reason.startswith("cannot read NIfTI")  # the path is .path
    other = compute_fingerprint(sources, samples_per_scan=2000, seed=4)
    assert other.foreground.mean == one.foreground.mean  # exact, not sampled
    assert other.foreground.n_samples == one.foreground.n_samples
    assert other.to_dict() != one.to_dict()  # the sampled percentiles move with the seed
    with pytest.raises(ValueError, match="fake"):
        compute_fingerprint(sources, samples_per_scan=100, on_error="stop")


def test_fingerprint_skips_scans_without_foreground_and_fails_on_none():
    air = torch.full((1, 4, 16, 16), -1024.0)
    body = make_phantom((8, 32, 32), seed=1)[0]
    fp = compute_fingerprint([air, body], samples_per_scan=100)
    assert fp.n_scans == 1 and "no foreground" in fp.skipped[0].reason
    want = r"^<tensor .*: no foreground .*; no scan could be fingerprinted \(2 of 2 skipped\)$"
    with pytest.raises(ValueError, match=want) as info:
        compute_fingerprint([air, air], samples_per_scan=100)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="on_error"):
        compute_fingerprint([body], on_error="raise")
