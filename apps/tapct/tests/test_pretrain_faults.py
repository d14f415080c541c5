"""``tapct pretrain`` under faults, in-process: memory, OOM, Ctrl-C, damaged checkpoints.

Each test feeds one fault kind of issue 13 and checks the contract: one line naming the
problem (exit 2, or 130 for Ctrl-C), nothing half-written left, and a rerun that
resumes to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
import torch
from tapct_app.cli import main
from tapct_app.train import checkpoint as ckpt


def _lines(err: str) -> list[str]:
    return [ln for ln in err.strip().splitlines() if ln and not ln.startswith("tapct: warning")]


@pytest.fixture
def cli(phantom_store, tiny_sets, tmp_path, capsys):
    """``cli(iterations, *args, data=..., out=...) -> (rc, stdout, stderr)``, tiny and on CPU."""

    def run(iterations: int = 4, *args: str, data=None, out=None):
        sets = [a for s in tiny_sets for a in ("--set", s)]
        rc = main([
            "pretrain", "--config", "demo", "--data", str(data or phantom_store),
            "-o", str(out or tmp_path / "run"), "--device", "cpu",
            "--iterations", str(iterations), *sets, *args,
        ])  # fmt: skip
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


@pytest.fixture
def reference(tiny_config, tmp_path_factory):
    """The final checkpoint of an uninterrupted 4-iteration tiny run."""
    from tapct_app.train.loop import run_pretraining

    out = tmp_path_factory.mktemp("reference")
    run_pretraining(tiny_config(4), out, progress=False)
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))


def _assert_same_weights(run_dir, want) -> None:
    got = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir / "checkpoints"))
    assert got["iteration"] == want["iteration"]
    for part in ("student", "teacher", "objective_state"):
        for key, value in want[part].items():
            assert torch.equal(got[part][key], value), (part, key)


def _no_data_read(monkeypatch) -> None:
    import tapct_app.train.build as build

    def refuse(*args, **kwargs):
        raise AssertionError("the data cache was built before the check")

    monkeypatch.setattr(build, "prepare_stores", refuse)


def test_memory_preflight_refuses_before_the_data_cache(cli, monkeypatch, tmp_path):
    import tapct_app.train.memory as memory

    monkeypatch.setattr(memory, "available_memory", lambda device: (2**20, "available host memory"))
    _no_data_read(monkeypatch)
    rc, _out, err = cli(4, out=tmp_path / "runs" / "pretrain")
    (line,) = _lines(err)
    assert rc == 2 and line.startswith("tapct: error: tap_nano_3d at 2 samples per micro-batch")
    assert "needs ~" in line and "but 0.0 GiB available host memory (cpu)" in line
    for option in ("--batch-size", "model.grad_checkpointing=1", "--config cpu_small",
                   "train.memory_check=false"):
        assert option in line
    assert not (tmp_path / "runs").exists()  # the parent it created too


def test_memory_model_matches_the_measured_objective():
    from tapct_app.pretrain import resolve_pretrain_config
    from tapct_app.train.memory import check_memory, estimate_step_memory

    cfg = resolve_pretrain_config("tap_b_3d", ["x"], device="cpu")
    cuda = estimate_step_memory(cfg, torch.device("cuda"))  # bf16 autocast, fake tensors
    # tap_b_3d.yaml's notes: ~1.85 GiB per sample in bf16 (every 4th block checkpointed),
    # ~3 GiB weights and optimizer; 32 per micro-batch needs ~59 GiB of an 80 GB GPU.
    assert 1.5 < cuda.per_sample_bytes / 2**30 < 2.0
    assert 2.0 < cuda.static_bytes / 2**30 < 3.0
    assert 50 < cuda.total_bytes / 2**30 < 65
    skipped = resolve_pretrain_config("tap_b_3d", ["x"], overrides=["train.memory_check=false"])
    assert check_memory(skipped, torch.device("cpu")) is None


def test_out_of_memory_mid_run_is_one_line_and_keeps_the_checkpoint(cli, monkeypatch, tmp_path):
    import tapct_app.train.loop as loop

    real = loop.train_step

    def step(parts, micro, iteration, *args):
        if iteration == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(parts, micro, iteration, *args)

    monkeypatch.setattr(loop, "train_step", step)
    rc, _out, err = cli(4)
    (line,) = _lines(err)
    good = tmp_path / "run" / "checkpoints" / "checkpoint-00000002.pt"
    assert rc == 2
    assert line.startswith("tapct: error: out of memory on cpu at iteration 3 (tap_nano_3d, 2 ")
    assert "--batch-size" in line and f"the last checkpoint {good} is intact" in line
    assert ckpt.list_checkpoints(good.parent) == [good]
    assert ckpt.load_checkpoint(good)["iteration"] == 2


def test_ctrl_c_checkpoints_the_step_and_a_rerun_resumes_exactly(
    cli, monkeypatch, tmp_path, reference
):
    import tapct_app.train.loop as loop

    real = loop.train_step

    def step(parts, micro, iteration, *args):
        if iteration == 2:  # Ctrl-C reaches the process group: the loader worker too
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # during the step: it completes
        return real(parts, micro, iteration, *args)

    monkeypatch.setattr(loop, "train_step", step)
    rc, _out, err = cli(4, "--set", "data.num_workers=1")
    run = tmp_path / "run"
    saved = run / "checkpoints" / "checkpoint-00000003.pt"
    assert rc == 130
    assert _lines(err) == [
        f"tapct: interrupted at iteration 3 of 4; checkpoint {saved} written; rerun the same "
        "command to resume"
    ]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(loop, "train_step", real)
    rc, out, _err = cli(4)
    assert rc == 0 and f"resuming from {saved} at iteration 3" in out
    _assert_same_weights(run, reference)


def test_keyboard_interrupt_names_the_checkpoint_that_resumes(cli, monkeypatch, tmp_path):
    import tapct_app.train.loop as loop

    real = loop.train_step

    def step(parts, micro, iteration, *args):
        if iteration == 3:
            raise KeyboardInterrupt  # a second Ctrl-C: at once
        return real(parts, micro, iteration, *args)

    monkeypatch.setattr(loop, "train_step", step)
    rc, _out, err = cli(4)
    good = tmp_path / "run" / "checkpoints" / "checkpoint-00000002.pt"
    assert rc == 130
    assert _lines(err) == [
        f"tapct: interrupted at iteration 3 of 4; rerun the same command to resume from {good}"
    ]


def test_damaged_newest_checkpoint_falls_back_with_a_warning(cli, tmp_path, reference):
    rc, _out, _err = cli(4)
    assert rc == 0
    run = tmp_path / "run"
    newest = run / "checkpoints" / "checkpoint-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated (a full disk, a bad copy)
    rc, out, err = cli(4)
    flat = " ".join(out.split())
    assert rc == 0, err
    assert f"warning: {newest}: not a readable checkpoint" in flat
    assert "moved aside to checkpoint-00000004.pt.damaged" in flat
    assert "resuming from" in flat and "checkpoint-00000002.pt at iteration 2" in flat
    assert (run / "checkpoints" / "checkpoint-00000004.pt.damaged").is_file()
    _assert_same_weights(run, reference)


def test_finished_run_reports_its_last_loss_not_nan(cli, tmp_path):
    import json

    rc, _out, _err = cli(2)
    assert rc == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rc, out, _err = cli(2)
    flat = " ".join(out.split())
    assert rc == 0 and "nan" not in flat
    assert f"the run is already complete (2 of 2 iterations); last loss {rows[-1]['loss']:.4f}" \
        in flat


def test_changed_iterations_on_resume_is_said_once(cli):
    rc, _out, _err = cli(4, "--stop-after", "2")
    assert rc == 0
    rc, out, _err = cli(4, "--stop-after", "1")  # same plan: no note
    assert rc == 0 and "rescaled" not in out
    rc, out, _err = cli(6, "--stop-after", "1")
    flat = " ".join(out.split())
    assert rc == 0
    assert ("note: resuming at iteration 3 with --iterations 6 (the run was planned for 4): "
            "the schedules") in flat
    assert "differs from a run planned for 6 from the start" in flat


def test_unknown_preset_is_refused_before_the_data_cache(
    phantom_store, monkeypatch, tmp_path, capsys
):
    _no_data_read(monkeypatch)
    scans = phantom_store.parent.parent / "nii"  # the phantoms as NIfTI: a cache to build
    rc = main(["pretrain", "--data", str(scans), "--preset", "tap_huge_3d",
               "-o", str(tmp_path / "run")])  # fmt: skip
    (line,) = _lines(capsys.readouterr().err)
    assert rc == 2 and line.startswith("tapct: error: model 'tap_huge_3d': unknown model")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["empty", "foreign"])
def test_empty_or_foreign_zarr_store_is_one_line_and_leaves_nothing(cli, tmp_path, kind):
    import zarr

    store = tmp_path / f"{kind}.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    if kind == "foreign":
        group.create_array("x", shape=(4, 4), dtype="f4")
    rc, _out, err = cli(2, data=store)
    assert rc == 2
    assert _lines(err) == [
        f"tapct: error: {store}: holds no complete scan (an empty zarr store, or one not "
        "written by tapct preprocess)"
    ]
    assert not (tmp_path / "run").exists()


def test_num_workers_above_the_cores_is_lowered_with_a_note(monkeypatch):
    import warnings

    import tapct_app.preprocess as preprocess
    from rich.console import Console
    from tapct_app.train.build import loader_workers

    monkeypatch.setattr(preprocess, "default_workers", lambda: 2)
    console = Console(record=True, width=300)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loader_workers(8, console) == 2
        assert loader_workers(2, console) == 2
    assert console.export_text().splitlines() == [
        "note: data.num_workers=8 is more than the 2 cores available to this process: using "
        "2 loader workers"
    ]
