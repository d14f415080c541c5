"""Embedding cost of a whole scan: the modelled GPU time, and a measurement where possible.

The model: FLOPs of one window (patch embedding, q/k/v and output projections, the MLP and
scaled-dot-product attention over all tokens, cls and registers included; multiply-adds
count 2 FLOPs; LayerNorm, GELU, softmax and the window averaging are left out, they are
memory-bound and under 2% of the time at these sizes) times the number of windows of the
sliding window (the same patch-aligned geometry ``tapct_eval.extract_features`` uses),
divided by the device's dense bf16 peak at a stated utilisation.

With CUDA the script also times ``extract_features`` (bf16 autocast, windows batched and
averaged on the device) on a synthetic scan of the requested shape with the requested
preset (random weights: the cost does not depend on them) and reports the achieved
fraction of peak. Without CUDA it times a tiny model on a small volume on the CPU, with
``sw_batch_size`` 1 and 4, so the code path cannot rot.

Usage:
    uv run python benchmarks/bench_embed.py                       # model + CPU figure
    uv run python benchmarks/bench_embed.py --shape 300 512 512 --model tap_b_3d  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from tapct_eval import extract_features
from tapct_eval._windows import padded_shape, scan_interval, window_starts
from tapct_vit3d import create_model, preset_config

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H200 SXM datasheet (same tensor cores as H100 SXM)


def window_flops(config: dict, roi: tuple[int, int, int], registers: int = 4) -> float:
    """FLOPs of one forward of a ``roi`` window through a ViT with ``config``."""
    e, depth = config["embed_dim"], config["depth"]
    mlp = config.get("mlp_ratio", 4.0)
    pd, ph, pw = config["patch_size"]
    patches = (roi[0] // pd) * (roi[1] // ph) * (roi[2] // pw)
    n = patches + 1 + registers
    embed = 2 * patches * (pd * ph * pw) * e
    linear = 2 * n * e * (3 * e + e + 2 * mlp * e)  # qkv, proj, fc1 + fc2
    attention = 2 * 2 * n * n * e  # q k^T and attn v
    return float(embed + depth * (linear + attention))


def n_windows(shape, roi, patch, overlap) -> int:
    """Windows ``extract_features`` runs on a ``(D, H, W)`` scan."""
    interval = scan_interval(roi, patch, overlap)
    return len(window_starts(padded_shape(shape, roi, patch), roi, interval))


def modelled(shape, model: str, roi, overlap: float, utilisation: float) -> dict:
    config = preset_config(model)
    roi = tuple(roi or config["img_size"])
    windows = n_windows(shape, roi, config["patch_size"], overlap)
    flops = window_flops(config, roi)
    seconds = windows * flops / (H200_BF16_DENSE_TFLOPS * 1e12 * utilisation)
    return {
        "model": model,
        "shape": list(shape),
        "roi": list(roi),
        "overlap": overlap,
        "windows": windows,
        "gflop_per_window": round(flops / 1e9, 1),
        "tflop_per_scan": round(windows * flops / 1e12, 1),
        "assumed_utilisation_of_bf16_peak": utilisation,
        "modelled_h200_seconds": round(seconds, 2),
    }


def measure(
    shape, model: str, roi, overlap: float, device: str, sw_batch_size: int, repeats: int = 2
) -> dict:
    torch.manual_seed(0)
    net = create_model(model).to(device).eval()
    roi = tuple(roi or net.img_size)
    volume = torch.randn(1, *shape)
    extract_features(net, volume[:, : roi[0] * 2], roi, overlap, sw_batch_size, device)  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        feats = extract_features(net, volume, roi, overlap, sw_batch_size, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    flops = len(feats.cls_tokens) * window_flops(preset_config(model), roi)
    best = min(times)
    out = {
        "device": device,
        "model": model,
        "shape": list(shape),
        "roi": list(roi),
        "sw_batch_size": sw_batch_size,
        "windows": len(feats.cls_tokens),
        "seconds": round(best, 3),
        "achieved_gflops": round(flops / best / 1e9, 2),
    }
    if device.startswith("cuda"):
        out["fraction_of_h200_bf16_peak"] = round(flops / best / 1e12 / H200_BF16_DENSE_TFLOPS, 3)
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512])
    parser.add_argument("--model", default="tap_b_3d")
    parser.add_argument("--roi", type=int, nargs=3, default=None, help="default: the model's")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--utilisation", type=float, default=0.35)
    parser.add_argument("--sw-batch-size", type=int, default=8)
    args = parser.parse_args()
    report = {
        "modelled": [
            modelled(args.shape, args.model, args.roi, args.overlap, args.utilisation),
            modelled(
                (args.shape[0], 224, 224), args.model, args.roi, args.overlap, args.utilisation
            ),
        ]
    }
    if torch.cuda.is_available():
        report["measured"] = [
            measure(args.shape, args.model, args.roi, args.overlap, "cuda", args.sw_batch_size)
        ]
    else:
        torch.set_num_threads(2)
        report["measured"] = [
            measure((24, 96, 96), "tap_nano_3d", None, 0.25, "cpu", batch) for batch in (1, 4)
        ]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
