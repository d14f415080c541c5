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


def tapct(*args: str) -> float:
    """Run ``tapct ARGS`` in a subprocess; return its wall time in seconds."""
    cmd = [sys.executable, "-m", "tapct_app", *args]
    print("$ tapct " + " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def write_task(path: Path, data: Path, roi: str, in_plane: str, steps: int) -> Path:
    """The probe of issue 12: 49 classes, train example_ct_sm, test the DICOM series."""
    task = {
        "name": "totalseg49-sm-to-dicom",
        "kind": "segmentation",
        "roi_size": [int(v) for v in roi.split(",")],
        "overlap": 0.25,
        "in_plane_size": [int(v) for v in in_plane.split(",")],
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


def main(argv: list[str] | None = None) -> int:
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
    if any("example_ct_dicom" in str(d) for d in data):
        raise SystemExit("do not pretrain on ct/example_ct_dicom: it is the probe's test scan")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    common = ["--config", args.config, "--device", "cpu"]
    for d in data:
        common += ["--data", str(d)]
    for s in args.sets:
        common += ["--set", s]

    t_pre = tapct("pretrain", *common, "-o", str(out / "pretrained"))
    tapct("pretrain", *common, "-o", str(out / "initial"), "--stop-after", "1")
    if not (out / "initial_model" / "model.safetensors").is_file():
        tapct("export", str(out / "initial"), "-o", str(out / "initial_model"))

    task = write_task(out / "task.yaml", DATA, args.roi, args.in_plane, args.steps)
    pre = benchmark(task, out / "pretrained" / "model", out / "bench_pretrained", args.seeds)
    init = benchmark(task, out / "initial_model", out / "bench_initial", args.seeds)

    gain = pre["mean"] - init["mean"]
    lo_pre = min(v for v in pre["per_seed"] if v is not None)
    hi_init = max(v for v in init["per_seed"] if v is not None)
    print()
    print(f"config {args.config}, pretrained on {', '.join(str(d) for d in data)}")
    print(f"pretraining wall time (this invocation): {t_pre / 60:.1f} min")
    print(f"macro Dice, pretrained : {fmt(pre)}")
    print(f"macro Dice, initial    : {fmt(init)}")
    print(f"gain {gain:+.4f}; seeds {'do not overlap' if lo_pre > hi_init else 'overlap'}")
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
        "seeds_overlap": not lo_pre > hi_init,
    }
    (out / "pretrain_vs_random.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
