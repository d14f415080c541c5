"""``kill -9`` and two writers, with real processes: ``tapct pretrain`` and ``tapct preprocess``.

The crash points are the deterministic fault hooks of ``tapct_data.faults``
(``TAPCT_FAULT=POINT:N`` kills the process at the N-th pass, ``POINT:N:stop`` halts it
there holding its lock). After each crash the same command is rerun; the result must
equal an uninterrupted run, bitwise on the CPU, and nothing half-written may be read.
A second process pointed at an output in use must refuse with one line naming the
holder, and proceed once the holder is killed (the kernel frees a ``flock``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tapct_app.train import checkpoint as ckpt

_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
_ENV.pop("TAPCT_FAULT", None)


def _tapct(*args: str, fault: str | None = None) -> subprocess.Popen:
    """Start ``python -m tapct_app ARGS`` (output to files: a halted child never blocks)."""
    env = dict(_ENV, **({"TAPCT_FAULT": fault} if fault else {}))
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "tapct_app", *args], env=env,
                            stdout=out, stderr=err, text=True)  # fmt: skip
    _LOGS[proc.pid] = (out, err)
    return proc


_LOGS: dict[int, tuple] = {}


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    proc.wait(timeout=timeout)
    texts = []
    for f in _LOGS.pop(proc.pid):
        f.seek(0)
        texts.append(f.read())
        f.close()
    return proc.returncode, texts[0], texts[1]


def _wait_stopped(proc: subprocess.Popen) -> None:
    """Block until ``proc`` has stopped itself (``SIGSTOP`` at its fault point)."""
    _pid, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"expected a stopped child, got status {status}"


def _kill_stopped(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    _finish(proc, timeout=60)


def _in_process(capsys, *args: str) -> tuple[int, str, str]:
    """``tapct ARGS`` in this process, one thread (as the children): saves a start-up."""
    from tapct_app.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(list(args))
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _lines(err: str) -> list[str]:
    return [ln for ln in err.strip().splitlines() if ln and not ln.startswith("tapct: warning")]


def _states_equal(got: dict, want: dict) -> None:
    assert got["iteration"] == want["iteration"]
    assert got["samples_seen"] == want["samples_seen"]
    for part in ("student", "teacher", "objective_state"):
        assert got[part].keys() == want[part].keys()
        for key, value in want[part].items():
            assert torch.equal(got[part][key], value), (part, key)
    for a, b in zip(got["optimizer"]["state"].values(), want["optimizer"]["state"].values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"],
                                                                        b["exp_avg_sq"])


def test_pretrain_killed_at_each_point_then_rerun_equals_an_uninterrupted_run(
    tiny_config, tiny_sets, phantom_store, tmp_path, capsys
):
    from tapct_app.train.loop import run_pretraining

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the children (OMP_NUM_THREADS=1): bitwise comparable
    try:
        reference = run_pretraining(tiny_config(6), tmp_path / "ref", progress=False)
    finally:
        torch.set_num_threads(threads)
    want = ckpt.load_checkpoint(reference.checkpoint)

    run = tmp_path / "run"
    folder = run / "checkpoints"
    sets = [a for s in tiny_sets for a in ("--set", s)]
    cmd = ["pretrain", "--config", "demo", "--data", str(phantom_store), "-o", str(run),
           "--device", "cpu", "--iterations", "6", *sets]  # fmt: skip

    # 1. killed while writing the checkpoint of iteration 4: a temporary, never read.
    rc, _out, err = _finish(_tapct(*cmd, fault="checkpoint.mid_write:2"))
    assert rc == -signal.SIGKILL, err[-2000:]
    assert [p.name for p in ckpt.list_checkpoints(folder)] == ["checkpoint-00000002.pt"]
    assert len(list(folder.glob(".checkpoint-*.tmp"))) == 1

    # 2. halted between steps (iteration 4 done, not yet checkpointed), holding the run's
    #    lock: a second pretrain on the same output refuses in one line naming it.
    holder = _tapct(*cmd, fault="pretrain.after_step:2:stop")
    try:
        _wait_stopped(holder)
        assert not list(folder.glob(".checkpoint-*.tmp"))  # removed by the resume
        rc, out, err = _in_process(capsys, *cmd)  # the second process: this one
        (line,) = _lines(err)
        assert rc == 2
        assert line.startswith(f"tapct: error: {run}: in use by another process (pid {holder.pid} ")
        assert "pretrain" in line and "choose another output" in line
        assert [p.name for p in ckpt.list_checkpoints(folder)] == ["checkpoint-00000002.pt"]
    finally:
        _kill_stopped(holder)  # kill -9 of the holder: the kernel frees the lock
    assert holder.returncode == -signal.SIGKILL

    # 3. killed after the checkpoint of iteration 4 is in place, before older ones are pruned.
    rc, _out, err = _finish(_tapct(*cmd, fault="checkpoint.after_write:1"))
    assert rc == -signal.SIGKILL, err[-2000:]
    assert ckpt.load_checkpoint(folder / "checkpoint-00000004.pt")["iteration"] == 4

    # 4. the same command, no fault: resumes from 4 and ends equal to the uninterrupted run.
    rc, out, err = _in_process(capsys, *cmd)
    assert rc == 0, err[-2000:]
    flat = " ".join(out.split())
    assert "resuming from" in flat and "checkpoint-00000004.pt at iteration 4" in flat
    _states_equal(ckpt.load_checkpoint(ckpt.latest_checkpoint(folder)), want)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(6))
    ref_lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    ref_rows = [json.loads(x) for x in ref_lines]
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    assert (run / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "ref" / "model" / "model.safetensors"
    ).read_bytes()
    assert not list(folder.glob(".checkpoint-*")) and not list(run.glob(".model.tmp-*"))


def _store_arrays(store: Path) -> dict[str, torch.Tensor]:
    from tapct_data import ZarrVolumeStore

    opened = ZarrVolumeStore(store)
    return {name: opened.read(name).data for name in opened.names}


def test_preprocess_second_writer_refuses_then_a_killed_build_resumes(
    phantom_store, tmp_path, capsys
):
    from tapct_app.cli import main

    scans = phantom_store.parent.parent / "nii"  # two phantom NIfTI files
    reference = tmp_path / "ref.zarr"
    assert main(["preprocess", str(scans), "-o", str(reference), "--workers", "1"]) == 0
    capsys.readouterr()
    store = tmp_path / "store.zarr"
    cmd = ["preprocess", str(scans), "-o", str(store), "--workers", "1"]

    # The first build halts after its first scan is committed, holding the store's lock.
    holder = _tapct(*cmd, fault="store.after_record:1:stop")
    try:
        _wait_stopped(holder)
        rc, _out, err = _in_process(capsys, *cmd)
        (line,) = _lines(err)
        assert rc == 2
        assert line.startswith(f"tapct: error: {store}: in use by another process "
                               f"(pid {holder.pid} ")  # fmt: skip
        assert "preprocess" in line
    finally:
        _kill_stopped(holder)
    assert holder.returncode == -signal.SIGKILL
    assert list(_store_arrays(store)) == ["phantom-000"]  # complete scans only

    rc, out, err = _in_process(capsys, *cmd)
    assert rc == 0, err[-2000:]
    assert "1 scans written, 1 already done, 0 skipped" in out
    got, want = _store_arrays(store), _store_arrays(reference)
    assert got.keys() == want.keys() == {"phantom-000", "phantom-001"}
    for name, data in want.items():
        assert torch.equal(got[name], data), name
    assert not [p for p in store.iterdir() if p.name.startswith(".tmp-")]
