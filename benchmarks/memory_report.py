"""Activation memory per sample of a TAP-CT student backbone, on the CPU, in seconds.

Counts the bytes autograd keeps for backward (``saved_tensors_hooks``, once per storage)
during a training forward over the multi-crop inputs, under ``FakeTensorMode`` (every op
dispatched, nothing computed or allocated), at two batch sizes; the slope is the
per-sample figure (``tapct_vit3d.activation_bytes_per_sample``).

    uv run python benchmarks/memory_report.py                      # TAP-B-3D, paper crops
    uv run python benchmarks/memory_report.py --preset tap_s_3d --drop-path 0.1
    uv run python benchmarks/memory_report.py --local 8x12x96x96 --global 2x12x224x224

Paper setting (TAP-CT Table 7): 2 global (12, 224, 224) + 8 local (12, 96, 96) crops,
bf16, drop path 0.2 (ViT-B).
"""

from __future__ import annotations

import argparse

import torch
from tapct_vit3d import activation_bytes_per_sample, create_model

GIB = 2**30


def _crop(text: str) -> tuple[int, tuple[int, int, int]]:
    n, d, h, w = (int(v) for v in text.lower().split("x"))
    return n, (d, h, w)


def main() -> None:
    """Print GiB per sample without checkpointing and checkpointing every N-th block."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tap_b_3d")
    parser.add_argument("--global", dest="global_", type=_crop, default=_crop("2x12x224x224"))
    parser.add_argument("--local", type=_crop, default=_crop("8x12x96x96"))
    parser.add_argument("--drop-path", type=float, default=0.2)
    parser.add_argument(
        "--mask-ratio",
        type=float,
        default=0.15,
        help="masked fraction of the global crops' patches (paper: half of"
        " the crops at 0.1-0.5: 0.15 on average)",
    )
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--batch-sizes", type=int, nargs=2, default=(10, 20))
    parser.add_argument(
        "--every",
        type=int,
        nargs="+",
        default=(4, 2, 1),
        help="checkpoint every N-th block (blocks 0, N, 2N, ...), one report per N",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model(args.preset, drop_path_rate=args.drop_path)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    crops = [args.global_, args.local]
    print(
        f"{args.preset}: crops {crops}, {args.dtype}, drop path {args.drop_path}, "
        f"mask ratio {args.mask_ratio}, batch sizes {tuple(args.batch_sizes)}"
    )
    settings = [("no checkpointing", False, 1)]
    settings += [(f"checkpoint every {n}. block", True, n) for n in args.every]
    for label, enable, every in settings:
        model.set_grad_checkpointing(enable, every=every)
        per_sample = activation_bytes_per_sample(
            model,
            crops,
            autocast_dtype=dtype,
            mask_ratio=args.mask_ratio,
            batch_sizes=tuple(args.batch_sizes),
        )
        print(f"  {label:28s} {per_sample / GIB:6.3f} GiB per sample")


if __name__ == "__main__":
    main()
