"""``tapct preprocess``: parallel, resumable, skip-and-report; shards train as one dataset."""

from __future__ import annotations

import json

from tapct_app.cli import main


def _tree(tmp_path):
    from tapct_app.train.data import write_demo_phantoms

    paths = write_demo_phantoms(tmp_path / "scans", 3, (12, 40, 40), seed=0)
    bad = tmp_path / "scans" / "zz_notes.nii.gz"
    bad.write_text("not a NIfTI file")
    return [*paths, bad], bad


def test_preprocess_skips_reports_and_resumes(tmp_path, capsys):
    inputs, bad = _tree(tmp_path)
    store = tmp_path / "s.zarr"
    args = ["preprocess", *map(str, inputs), "-o", str(store), "--workers", "1"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"3 scans written, 1 skipped (see {store / 'skipped.jsonl'})"
    rows = [json.loads(line) for line in (store / "skipped.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(bad)]
    assert rows[0]["reason"].startswith("cannot read NIfTI")
    assert main(args) == 0  # a rerun: nothing to do, the same report
    rerun = capsys.readouterr().out.strip().splitlines()[-1]
    assert rerun == f"0 scans written, 3 already done, 1 skipped (see {store / 'skipped.jsonl'})"
    # --on-error stop: the bad scan's one-line error, exit 2
    assert main([*args[:-2], "-o", str(tmp_path / "stop.zarr"), "--on-error", "stop"]) == 2
    assert capsys.readouterr().err.startswith(f"tapct: error: {bad}")


def test_nothing_readable_is_exit_2_and_nothing_on_disk(tmp_path, capsys):
    _inputs, bad = _tree(tmp_path)
    out = tmp_path / "none.zarr"
    assert main(["preprocess", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tapct: error: {bad}: cannot read NIfTI")
    assert err.endswith("; no scan could be read (1 skipped)") and not out.exists()


def test_dry_run_writes_nothing_but_the_list(tmp_path, capsys):
    inputs, _bad = _tree(tmp_path)
    from tapct_data import expand_inputs

    listed = tmp_path / "list.csv"
    args = ["preprocess", *map(str, inputs[:3]), "--dry-run", "--list-file", str(listed)]
    assert main(args) == 0
    assert "3 scans, 0 skipped" in capsys.readouterr().out
    assert expand_inputs([listed]).scans == expand_inputs(inputs[:3]).scans
    assert main(["preprocess", str(listed), "-o", str(tmp_path / "s.zarr")]) == 0
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(f"3 scans written, 0 skipped (see {tmp_path / 's.zarr' / 'skipped.jsonl'})")
    )


def test_two_shards_hold_every_scan_once_and_pretrain_on_both(tmp_path, tiny_config, capsys):
    import attrs
    from tapct_app.train.loop import run_pretraining
    from tapct_data import open_stores

    inputs, _bad = _tree(tmp_path)
    folder = tmp_path / "shards"
    for k in range(2):
        out = str(folder / f"shard-{k}.zarr")
        assert main(["preprocess", *map(str, inputs), "-o", out, "--shard", f"{k}/2"]) == 0
    (folder / "slurm-1.out").write_text("a log beside the shards\n")
    both = open_stores(folder)
    assert sorted(both.names) == ["phantom-000", "phantom-001", "phantom-002"]
    assert [len(s) for s in both.stores] == [2, 1]  # 0/2: phantom-000, -002; 1/2: -001, notes
    assert main(["preprocess", str(inputs[0]), "-o", str(tmp_path / "x"), "--shard", "2/2"]) == 2
    cfg = tiny_config(2)
    cfg = attrs.evolve(cfg, data=attrs.evolve(cfg.data, sources=(str(folder),)))
    result = run_pretraining(cfg, tmp_path / "run", progress=False)
    summary = json.loads((result.output / "summary.json").read_text())
    assert summary["store"] == ", ".join(str(s.path) for s in both.stores)
    assert summary["iterations_total"] == 2 and summary["last_loss"] == summary["last_loss"]


def _totalsegmentator_like(shared_data, root):
    """``s0001/ct.nii.gz`` with its ``s0001/segmentations/liver.nii.gz`` label map."""
    import shutil

    (root / "s0001" / "segmentations").mkdir(parents=True)
    shutil.copy(shared_data / "ct" / "example_ct_sm.nii.gz", root / "s0001" / "ct.nii.gz")
    label = root / "s0001" / "segmentations" / "liver.nii.gz"
    shutil.copy(shared_data / "labels" / "example_ct_sm_seg.nii.gz", label)
    return label


def test_exclude_leaves_out_label_folders_and_a_label_map_is_skipped(shared_data, tmp_path, capsys):
    from tapct_data import ZarrVolumeStore

    label = _totalsegmentator_like(shared_data, tmp_path / "ts")
    store = tmp_path / "s.zarr"
    args = ["preprocess", str(tmp_path / "ts"), "--workers", "1", "-o", str(store)]
    assert main([*args, "--exclude", "segmentations/*"]) == 0
    assert ZarrVolumeStore(store).names == ["s0001_ct"]
    assert (store / "skipped.jsonl").read_text() == ""
    assert (
        capsys.readouterr()
        .out.strip()
        .endswith(f"1 scans written, 0 skipped (see {store / 'skipped.jsonl'})")
    )
    # Without --exclude the label map is not pretrained on: skipped, with the reason.
    store2 = tmp_path / "s2.zarr"
    assert main([*args[:-1], str(store2)]) == 0
    assert ZarrVolumeStore(store2).names == ["s0001_ct"]
    (row,) = [json.loads(line) for line in (store2 / "skipped.jsonl").read_text().splitlines()]
    assert row["path"] == str(label)
    assert "label map" in row["reason"], row


def test_progress_lines_and_paths_printed_literally(tmp_path, capsys):
    from tapct_app.train.data import write_demo_phantoms

    root = tmp_path / "out[ct]" / "[/b]"  # rich markup would eat "[ct]" and "[/b]"
    write_demo_phantoms(root, 2, (8, 24, 24), seed=0)
    store = tmp_path / "out[ct]" / "s[/b].zarr"
    assert main(["preprocess", str(root), "-o", str(store), "--workers", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # Not a terminal: plain progress lines (the first scan, then every ~5 %), then the summary.
    assert lines[0].startswith("preprocess: 1/2 scans (50%), ") and "scans/s, eta " in lines[0]
    assert lines[1].startswith("preprocess: 2/2 scans (100%), ")
    assert lines[-1] == f"2 scans written, 0 skipped (see {store / 'skipped.jsonl'})"
    assert main(["preprocess", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert str(root / "phantom-000.nii.gz") in out and "2 scans, 0 skipped" in out
    stats = tmp_path / "out[ct]" / "[b]stats.json"
    assert main(["fingerprint", str(root), "-o", str(stats), "--workers", "1"]) == 0
    assert f"wrote {stats} " in capsys.readouterr().out


def test_pretrain_data_honours_include_and_exclude(shared_data, tmp_path):
    """``pretrain --exclude`` reaches the cache build: the label folder is never read."""
    from tapct_app.train.data import prepare_stores
    from tapct_data import ZarrVolumeStore

    _totalsegmentator_like(shared_data, tmp_path / "ts")
    cache = tmp_path / "cache"
    (store,) = prepare_stores([tmp_path / "ts"], cache, workers=1, exclude=("segmentations/*",))
    assert ZarrVolumeStore(store).names == ["s0001_ct"]
    assert (store / "skipped.jsonl").read_text() == ""  # the label map was not even tried
    (other,) = prepare_stores([tmp_path / "ts"], cache, workers=1)
    assert other != store  # another selection, another cache
    (row,) = [json.loads(line) for line in (other / "skipped.jsonl").read_text().splitlines()]
    assert "label map" in row["reason"]
