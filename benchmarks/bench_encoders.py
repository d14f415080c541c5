"""Encoders side by side on the two labelled scans: timm 2D slice by slice, MONAI, ours.

Runs ``tapct benchmark``'s code (``tapct_app.benchmark.benchmark_command``) once per
model on the README's segmentation task (train ``ct/example_ct_sm`` with its
TotalSegmentator labels, test the ``ct/example_ct_dicom`` series; 49 merged classes),
3 seeds by default, and prints one table: macro Dice mean +- std over seeds, feature
stride and window per model, and CPU/wall seconds. All models have random weights
(timm and MONAI build with ``pretrained=False``; a preset is randomly initialised), so
the figures compare architectures and preprocessing, not pretraining.

Usage:
    uv run python benchmarks/bench_encoders.py [--seeds 0,1,2] [--steps 100]
        [--model timm:vit_small_patch16_224 --model monai:SwinUNETR --model tap_nano_3d]
        [--roi 12 64 64] [--in-plane 64 64] [--blend gaussian] [--output DIR]

Scans are read from ``$TAPCT_SHARED_DATA`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DEFAULT_MODELS = ["timm:vit_small_patch16_224", "monai:SwinUNETR", "tap_nano_3d"]


def _task_text(data: Path, roi, in_plane, steps: int, blend: str) -> str:
    return (
        "name: totalseg-two-scans\nkind: segmentation\n"
        f"roi_size: {list(roi)}\nin_plane_size: {list(in_plane)}\n"
        "num_classes: 49\nlabel_map: totalsegmentator_49\n"
        f"steps: {steps}\nblend_mode: {blend}\n"
        f"train: [{{image: {data}/ct/example_ct_sm.nii.gz, "
        f"label: {data}/labels/example_ct_sm_seg.nii.gz}}]\n"
        f"test: [{{image: {data}/ct/example_ct_dicom, "
        f"label: {data}/labels/example_ct_dicom_seg.nii.gz}}]\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="repeatable; default: 3 encoders")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--roi", type=int, nargs=3, default=[12, 64, 64])
    parser.add_argument("--in-plane", type=int, nargs=2, default=[64, 64])
    parser.add_argument("--blend", choices=["constant", "gaussian"], default="gaussian")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    import warnings

    from rich.console import Console
    from rich.table import Table
    from tapct_app.benchmark import benchmark_command
    from tapct_app.encoders import load_encoder

    warnings.filterwarnings("ignore", category=UserWarning)
    data = Path(os.environ.get("TAPCT_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))
    models = args.model or DEFAULT_MODELS
    seeds = tuple(int(s) for s in args.seeds.split(","))
    quiet = Console(quiet=True)
    console = Console(width=160)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.output or Path(tmp)
        task = Path(tmp) / "task.yaml"
        task.write_text(_task_text(data, args.roi, args.in_plane, args.steps, args.blend))
        table = Table(
            title=f"totalseg-two-scans: macro Dice over seeds {list(seeds)} "
            f"({args.steps} steps, {args.blend} blending, random weights)"
        )
        columns = ("model", "Dice mean", "Dice std", "stride", "window", "E", "CPU s", "wall s")
        for column in columns:
            table.add_column(column)
        for spec in models:
            encoder = load_encoder(spec, "cpu")
            window = encoder.preprocessing.resolve_window(args.roi, encoder.stride)
            cpu, wall = time.process_time(), time.perf_counter()
            out = root / "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)
            result = benchmark_command(task, spec, out, seeds, args.device, console=quiet)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            table.add_row(
                spec,
                f"{result.summary.mean:.4f}",
                f"{result.summary.std:.4f}",
                str(tuple(encoder.stride)),
                str(window),
                str(encoder.embed_dim),
                f"{cpu:.0f}",
                f"{wall:.0f}",
            )
            console.print(f"{spec}: dice per seed {[round(v, 4) for v in result.per_seed]}")
        console.print(table)


if __name__ == "__main__":
    main()
