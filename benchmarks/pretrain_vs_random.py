"""Does pretraining help? A config pretrained on real scans against its own initial weights.

1. ``tapct pretrain --config CONFIG --data SCANS -o OUT/pretrained`` (the full run);
2. the same command into ``OUT/initial`` with ``--stop-after 1``, then ``tapct export``:
   the warm-up learning rate is 0 at the first step, so the exported teacher is exactly the
   initial weights (``--iterations 1`` would not be the same run: warm-ups are rescaled to
   the run length);
3. ``tapct benchmark`` with the paper's linear segmentation probe (49 merged
   TotalSegmentator classes) on both encoders: trained on ``ct/example_ct_sm.nii.gz``,
   tested on the DICOM series ``ct/example_ct_dicom`` (never pretrain on that series: it is
   the test scan; ``example_ct_sm`` is a slice range of ``example_ct``, which the default
   pretrains on — a caveat to state with the figures);
4. prints macro Dice mean +- std and per seed for both, the gain, whether the seeds
   overlap, and the per-class Dice side by side; writes ``OUT/pretrain_vs_random.json``.

Usage::

    uv run python benchmarks/pretrain_vs_random.py --config cpu_small --out runs/pvr \
        [--data ../shared/data/ct/example_ct.nii.gz] [--seeds 0,1,2] [--steps 150] \
        [--set train.iterations=800 ...]

Each step is the real command (a subprocess), so a finished step is skipped on a rerun
(pretraining resumes; a benchmark folder with ``results.json`` is reused).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TAPCT_SHARED_DATA", ROOT.parent / "shared" / "data"))


class UsageError(Exception):
    """A user mistake: printed as one ``pretrain_vs_random: error: ...`` line, exit 2."""


def tapct(*args: str) -> float:
    """Run ``tapct ARGS`` in a subprocess; return its wall time in seconds.

    Raises:
        UsageError: the command failed (its own one-line error is printed above).
    """
    cmd = [sys.executable, "-m", "tapct_app", *args]
    print("$ tapct " + " ".join(args), flush=True)
    start = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise UsageError(f"tapct {args[0]} failed (exit {rc}); its message is above")
    return time.perf_counter() - start


def parse_ints(option: str, text: str, length: int | None = None) -> list[int]:
    """``"8,64,64"`` -> ``[8, 64, 64]`` (non-negative ints; ``length`` of them when given).

    Raises:
        UsageError: naming the option and the text.
    """
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or (length is not None and len(values) != length) or min(values) < 0:
        what = f"{length} " if length else ""
        raise UsageError(f"{option} {text!r}: expected {what}comma-separated non-negative integers")
    return values


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refuse_test_scan(data: list[Path], series: Path) -> None:
    """Refuse ``--data`` that is, holds or lies inside the probe's test series, or copies it.

    A copy is any file under a ``--data`` file or folder with the bytes of one of the
    series' files (its UIDs are blanked, so they cannot be compared; a converted copy,
    e.g. to NIfTI, is not recognised).

    Raises:
        UsageError: naming the path and the test series.
    """
    test = series.resolve()
    files = [f for f in test.iterdir() if f.is_file()] if test.is_dir() else []
    sizes = {f.stat().st_size for f in files}
    digests: set[str] | None = None
    for d in data:
        path = d.resolve()
        if path == test or test.is_relative_to(path) or path.is_relative_to(test):
            raise UsageError(f"--data {d}: holds {series}, the probe's test scan")
        candidates = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
        for f in candidates:
            if f.stat().st_size not in sizes:
                continue
            digests = digests if digests is not None else {_digest(g) for g in files}
            if _digest(f) in digests:
                raise UsageError(f"--data {d}: {f} is a copy of a file of {series}, "
                                 "the probe's test scan")  # fmt: skip


def write_task(
    path: Path, data: Path, roi: list[int], in_plane: list[int], steps: int
) -> Path:
    """The probe of issue 12: 49 classes, train example_ct_sm, test the DICOM series.

    ``roi`` is the ``(D, H, W)`` window in voxels, ``in_plane`` the ``(H, W)`` resize.
    """
    task = {
        "name": "totalseg49-sm-to-dicom",
        "kind": "segmentation",
        "roi_size": list(roi),
        "overlap": 0.25,
        "in_plane_size": list(in_plane),
        "num_classes": 49,
        "label_map": "totalsegmentator_49",
        "steps": steps,
        "train": [
            {
                "image": str(data / "ct" / "example_ct_sm.nii.gz"),
                "label": str(data / "labels" / "example_ct_sm_seg.nii.gz"),
            }
        ],
        "test": [
            {
                "image": str(data / "ct" / "example_ct_dicom"),
                "label": str(data / "labels" / "example_ct_dicom_seg.nii.gz"),
            }
        ],
    }
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def benchmark(task: Path, model: Path, out: Path, seeds: str) -> dict:
    """``tapct benchmark`` once (reused when its results exist); the parsed results.json."""
    if not (out / "results.json").is_file():
        tapct("benchmark", str(task), "--model", str(model), "-o", str(out), "--seeds", seeds,
              "--device", "cpu")  # fmt: skip
    return json.loads((out / "results.json").read_text())


def fmt(r: dict) -> str:
    seeds = ", ".join(f"{v:.4f}" for v in r["per_seed"] if v is not None)
    return f"{r['mean']:.4f} +- {r['std']:.4f}  ({seeds})"


def verdict(pre: list[float | None], init: list[float | None]) -> str:
    """Whether the per-seed macro Dice of the two encoders overlap, and who is ahead."""
    a = [v for v in pre if v is not None and not math.isnan(v)]
    b = [v for v in init if v is not None and not math.isnan(v)]
    if len(a) < 2 or len(b) < 2:
        return "one probe seed: no spread to compare it with"
    if min(a) > max(b):
        return "seeds do not overlap: pretrained better on every seed"
    if max(a) < min(b):
        return "seeds do not overlap: initial weights better on every seed"
    return "seeds overlap"


def check_settings(out: Path, settings: dict) -> None:
    """Record the run's settings in ``OUT/settings.json``; refuse other settings later.

    Raises:
        UsageError: ``OUT`` is a file, or holds results of other settings.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file")
    record = out / "settings.json"
    if record.is_file():
        old = json.loads(record.read_text())
        if old != settings:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items()
                             if old.get(k) != v)  # fmt: skip
            raise UsageError(f"--out {out}: holds results of other settings ({diff}); "
                             "use another --out")  # fmt: skip
        return
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=2))


def initial_weights(common: list[str], out: Path) -> Path:
    """Export the run's weights at iteration 0 (the first step's lr is 0) once.

    A rerun reuses ``OUT/initial_model``, or exports ``checkpoint-00000001.pt`` when only
    that exists; ``--stop-after 1`` is never run twice (it would resume to iteration 2).
    """
    model = out / "initial_model"
    if (model / "model.safetensors").is_file():
        return model
    first = out / "initial" / "checkpoints" / "checkpoint-00000001.pt"
    if not first.is_file():
        tapct("pretrain", *common, "-o", str(out / "initial"), "--stop-after", "1")
    tapct("export", str(first), "-o", str(model))
    return model


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; user mistakes end with one line on stderr and exit 2."""
    try:
        return _run(argv)
    except UsageError as exc:
        print(f"pretrain_vs_random: error: {exc}", file=sys.stderr)
        return 2


def _run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu_small", help="shipped config name or file")
    parser.add_argument("--data", action="append", type=Path, default=None,
                        help="scans to pretrain on (repeatable; default example_ct.nii.gz)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=150, help="probe optimizer steps")
    parser.add_argument("--roi", default="8,64,64")
    parser.add_argument("--in-plane", default="80,80")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="pretraining overrides section.key=value (repeatable)")
    args = parser.parse_args(argv)
    data = args.data or [DATA / "ct" / "example_ct.nii.gz"]
    roi = parse_ints("--roi", args.roi, 3)
    in_plane = parse_ints("--in-plane", args.in_plane, 2)
    seeds = parse_ints("--seeds", args.seeds)
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps}: must be at least 1")
    if min(roi) < 1 or min(in_plane) < 1:
        raise UsageError(f"--roi {args.roi} / --in-plane {args.in_plane}: sizes must be >= 1")
    for d in data:
        if not d.exists():
            raise UsageError(f"--data {d}: no such file or folder")
    refuse_test_scan(data, DATA / "ct" / "example_ct_dicom")
    out: Path = args.out
    settings = {"config": args.config, "data": [str(d.resolve()) for d in data],
                "sets": args.sets, "seeds": seeds, "steps": args.steps, "roi": roi,
                "in_plane": in_plane}  # fmt: skip
    check_settings(out, settings)
    common = ["--config", args.config, "--device", "cpu"]
    for d in data:
        common += ["--data", str(d)]
    for s in args.sets:
        common += ["--set", s]

    t_pre = tapct("pretrain", *common, "-o", str(out / "pretrained"))
    initial = initial_weights(common, out)
    task = write_task(out / "task.yaml", DATA, roi, in_plane, args.steps)
    seed_list = ",".join(str(v) for v in seeds)
    pre = benchmark(task, out / "pretrained" / "model", out / "bench_pretrained", seed_list)
    init = benchmark(task, initial, out / "bench_initial", seed_list)

    gain = pre["mean"] - init["mean"]
    print()
    print(f"config {args.config}, pretrained on {', '.join(str(d) for d in data)}")
    print(f"pretraining wall time (this invocation): {t_pre / 60:.1f} min")
    print(f"macro Dice, pretrained : {fmt(pre)}")
    print(f"macro Dice, initial    : {fmt(init)}")
    said = verdict(pre["per_seed"], init["per_seed"])
    print(f"gain {gain:+.4f}; {said}")
    print()
    print(f"{'class':28s} {'pretrained':>12s} {'initial':>12s}")
    for name in sorted(set(pre["per_class"]) | set(init["per_class"])):
        a = pre["per_class"].get(name, {}).get("mean")
        b = init["per_class"].get(name, {}).get("mean")
        show = [f"{v:12.4f}" if v is not None and not math.isnan(v) else f"{'-':>12s}"
                for v in (a, b)]  # fmt: skip
        print(f"{name:28s} {show[0]} {show[1]}")
    summary = {
        "config": args.config,
        "data": [str(d) for d in data],
        "sets": args.sets,
        "pretrain_wall_s": t_pre,
        "pretrained": pre,
        "initial": init,
        "gain": gain,
        "verdict": said,
    }
    (out / "pretrain_vs_random.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
