"""End to end on the real labelled scans: features of a small (randomly initialised) model
on ct/example_ct_sm.nii.gz, a linear probe trained there on the 49 merged TotalSegmentator
classes, Dice measured on the DICOM series ct/example_ct_dicom/ (label map stored LAS, brought
onto the DICOM grid by the canonical readers), figures written.

Usage: uv run python benchmarks/eval_real_scans.py [--steps 100] [--seeds 0 1 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from tapct_eval import run_benchmark

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def loaders():
    """tapct_data readers (canonical LPS, HU) + paper normalisation when available, else MONAI."""
    try:
        from tapct_data import ClipNormalize, read_label, read_volume
    except ImportError:  # the package's own MONAI defaults
        return None, None
    normalize = ClipNormalize()

    def load_image(path):
        return normalize(read_volume(path).data)

    def load_label(path, image_path):
        return read_label(path, reference=read_volume(image_path)).data[0].long()

    return load_image, load_label


def make_model():
    torch.manual_seed(0)
    try:
        from tapct_vit3d import create_model

        return create_model("tap_nano_3d"), "tap_nano_3d-random"
    except ImportError as exc:  # pragma: no cover
        raise SystemExit(f"needs tapct_vit3d for a backbone: {exc}") from exc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--in-plane", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="tapct_eval_real_"))
    task = {
        "name": "totalseg49-real",
        "kind": "segmentation",
        "roi_size": [12, 64, 64],
        "overlap": 0.25,
        "num_classes": 49,
        "label_map": "totalsegmentator_49",
        "in_plane_size": [args.in_plane, args.in_plane],
        "steps": args.steps,
        "lr": 0.01,
        "train": [
            {
                "image": str(args.data / "ct/example_ct_sm.nii.gz"),
                "label": str(args.data / "labels/example_ct_sm_seg.nii.gz"),
            }
        ],
        "test": [
            {
                "image": str(args.data / "ct/example_ct_dicom"),
                "label": str(args.data / "labels/example_ct_dicom_seg.nii.gz"),
            }
        ],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "task.json").write_text(json.dumps(task, indent=2))
    model, name = make_model()
    load_image, load_label = loaders()
    res = run_benchmark(
        out / "task.json",
        model,
        out,
        seeds=tuple(args.seeds),
        load_image=load_image,
        load_label=load_label,
        model_name=name,
    )
    print(
        f"macro Dice {res.summary}; outputs in {out}: {sorted(p.name for p in res.files.values())}"
    )
    return res


if __name__ == "__main__":
    main()
