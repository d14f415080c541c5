"""benchmarks/pretrain_vs_random.py: its checks, reruns and guards (issue 12's fresh-user
faults), with the tapct subprocesses replaced by fakes that write what the real ones do."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script(monkeypatch, shared_data):
    """A fresh copy of the script as a module, its DATA the real scans."""
    spec = importlib.util.spec_from_file_location(
        "pretrain_vs_random", ROOT / "benchmarks" / "pretrain_vs_random.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DATA", shared_data)
    return module


@pytest.fixture()
def pvr(monkeypatch, shared_data):
    """The script as a module, its tapct calls recorded and faked, DATA the real scans."""
    module = _load_script(monkeypatch, shared_data)
    calls: list[tuple[str, ...]] = []

    def fake_tapct(*args: str) -> float:
        calls.append(args)
        out = Path(args[args.index("-o") + 1])
        if args[0] == "pretrain" and "--stop-after" in args:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            n = len(list((out / "checkpoints").glob("*.pt"))) + 1
            (out / "checkpoints" / f"checkpoint-{n:08d}.pt").write_text("x")
        elif args[0] == "pretrain":
            (out / "model").mkdir(parents=True, exist_ok=True)
            (out / "model" / "model.safetensors").write_text("x")
        elif args[0] == "export":
            out.mkdir(parents=True, exist_ok=True)
            (out / "model.safetensors").write_text("x")
        return 1.0

    def fake_benchmark(task, model, out, seeds):
        calls.append(("benchmark", str(model), seeds))
        n = len(seeds.split(","))
        return {"mean": 0.05, "std": 0.0, "per_seed": [0.05] * n, "per_class": {}}

    monkeypatch.setattr(module, "tapct", fake_tapct)
    monkeypatch.setattr(module, "benchmark", fake_benchmark)
    module.calls = calls
    return module


def _run(pvr, capsys, *args: str) -> tuple[int, str]:
    rc = pvr.main([*args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--roi", "8,abc"], "--roi '8,abc': expected 3 comma-separated"),
        (["--roi", "8,64"], "--roi '8,64': expected 3 comma-separated"),
        (["--seeds", "abc"], "--seeds 'abc': expected comma-separated"),
        (["--in-plane", "0,80"], "sizes must be >= 1"),
        (["--steps", "0"], "--steps 0: must be at least 1"),
        (["--data", "/no/such/scan.nii.gz"], "--data /no/such/scan.nii.gz: no such file"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(pvr, capsys, tmp_path, args, message):
    rc, err = _run(pvr, capsys, "--out", str(tmp_path / "o"), *args)
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("pretrain_vs_random: error: ") and message in err
    assert pvr.calls == [] and not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_refused(pvr, capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    rc, err = _run(pvr, capsys, "--out", str(tmp_path / "afile"))
    assert rc == 2 and "afile: is a file" in err and pvr.calls == []


def test_the_test_scan_is_refused_however_it_is_reached(pvr, capsys, tmp_path, shared_data):
    series = shared_data / "ct" / "example_ct_dicom"
    # The series' parent folder (it would be walked) and a byte copy under another name.
    copy = tmp_path / "tree" / "renamed"
    copy.mkdir(parents=True)
    shutil.copy(sorted(series.iterdir())[3], copy / "slice.dcm")
    for data, where in [(shared_data / "ct", "holds"), (series, "holds"),
                        (tmp_path / "tree", "slice.dcm is a copy")]:  # fmt: skip
        rc, err = _run(pvr, capsys, "--out", str(tmp_path / "o"), "--data", str(data))
        assert rc == 2 and where in err and "the probe's test scan" in err, err
    assert pvr.calls == []
    # A real scan that is not the test scan is accepted.
    rc, _ = _run(pvr, capsys, "--out", str(tmp_path / "o"), "--seeds", "0",
                 "--data", str(shared_data / "ct" / "example_ct_sm.nii.gz"))  # fmt: skip
    assert rc == 0


def test_a_rerun_keeps_the_initial_weights_and_refuses_other_settings(pvr, capsys, tmp_path):
    out = tmp_path / "o"
    assert _run(pvr, capsys, "--out", str(out), "--seeds", "0")[0] == 0
    stop_after = [c for c in pvr.calls if "--stop-after" in c]
    assert len(stop_after) == 1
    # A first run that stopped before its export: the rerun exports checkpoint 1 itself
    # and never resumes the initial run to iteration 2.
    shutil.rmtree(out / "initial_model")
    pvr.calls.clear()
    assert _run(pvr, capsys, "--out", str(out), "--seeds", "0")[0] == 0
    assert not [c for c in pvr.calls if "--stop-after" in c]
    (export,) = [c for c in pvr.calls if c[0] == "export"]
    assert export[1].endswith("checkpoint-00000001.pt")
    assert sorted(p.name for p in (out / "initial" / "checkpoints").iterdir()) == [
        "checkpoint-00000001.pt"
    ]
    # Other seeds or probe steps into the same folder: refused, nothing rerun.
    pvr.calls.clear()
    rc, err = _run(pvr, capsys, "--out", str(out), "--seeds", "0,1", "--steps", "20")
    assert rc == 2 and "holds results of other settings" in err
    assert "seeds [0] -> [0, 1]" in err and "steps 150 -> 20" in err and pvr.calls == []


def test_one_probe_seed_makes_no_overlap_claim(pvr, capsys, tmp_path):
    assert pvr.main(["--out", str(tmp_path / "o"), "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "one probe seed: no spread to compare it with" in out and "overlap" not in out


def test_the_verdict_says_who_is_ahead(pvr):
    # The confirmation run of issue 12: cpu_small against its initial weights.
    assert pvr.verdict([0.0180, 0.0165, 0.0142], [0.0511, 0.0421, 0.0362]) == (
        "seeds do not overlap: initial weights better on every seed"
    )
    assert pvr.verdict([0.06, 0.07], [0.04, 0.05]).endswith("pretrained better on every seed")
    assert pvr.verdict([0.04, 0.06], [0.05, 0.07]) == "seeds overlap"
    assert pvr.verdict([0.06], [0.04]).startswith("one probe seed")


def test_a_failing_tapct_step_ends_in_one_line(monkeypatch, capsys, tmp_path, shared_data):
    """The real tapct() turns a failed subprocess into one line (its own error is above)."""
    real = _load_script(monkeypatch, shared_data)  # tapct() not faked
    ran: list[list[str]] = []

    def failing_run(cmd):
        ran.append(cmd)
        return type("Completed", (), {"returncode": 2})()

    monkeypatch.setattr(real.subprocess, "run", failing_run)
    rc = real.main(["--out", str(tmp_path / "o"), "--seeds", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err == "pretrain_vs_random: error: tapct pretrain failed (exit 2); " \
        "its message is above\n"
    assert ran[0][:3] == [sys.executable, "-m", "tapct_app"] and len(ran) == 1
