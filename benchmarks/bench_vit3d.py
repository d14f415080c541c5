"""Benchmark: forward+backward of tapct_vit3d's ``tap_s_3d`` against timm's ViT-S.

Both models have width 384, depth 12, 6 heads, 4 registers, LayerScale and the same token
count: ours sees ``(B, 1, 12, 96, 96)`` with patch ``(4, 8, 8)`` (grid 3 x 12 x 12 = 432
patches, positional embedding resampled from the trained 3 x 28 x 28 grid each step, as for
a DINOv2 local crop); timm sees ``(B, 1, 96, 288)`` with patch 8 (12 x 36 = 432 patches,
its native grid). Runs are interleaved in one process; medians after warmup are reported.

Usage: ``uv run python benchmarks/bench_vit3d.py [--batch 2] [--repeats 7] [--warmup 2]
[--device cpu] [--threads N]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tapct_vit3d import create_model
from timm.models.vision_transformer import VisionTransformer


def step(model: torch.nn.Module, x: torch.Tensor, ours: bool) -> None:
    """One training-like step; both sides use the cls and patch tokens, as a DINOv2 student."""
    model.zero_grad(set_to_none=True)
    if ours:
        out = model.forward_features(x)
        cls, patches = out["x_norm_clstoken"], out["x_norm_patchtokens"]
    else:
        tokens = model.forward_features(x)  # (B, 1 + 4 + N, E), normalised
        cls, patches = tokens[:, 0], tokens[:, 5:]
    (cls.float().square().mean() + patches.float().square().mean()).backward()


def timed(model: torch.nn.Module, x: torch.Tensor, ours: bool, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step(model, x, ours)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    ours = create_model("tap_s_3d").to(device).train()
    ref = VisionTransformer(
        img_size=(96, 288), patch_size=8, in_chans=1, num_classes=0, embed_dim=384, depth=12,
        num_heads=6, init_values=1e-5, reg_tokens=4, no_embed_class=True,
    ).to(device).train()
    x3d = torch.randn(args.batch, 1, 12, 96, 96, device=device)
    x2d = torch.randn(args.batch, 1, 96, 288, device=device)
    n_ours = ours.forward_features(x3d)["x_prenorm"].shape[1]
    n_ref = ref.forward_features(x2d).shape[1]
    assert n_ours == n_ref, (n_ours, n_ref)
    for _ in range(args.warmup):
        step(ours, x3d, True)
        step(ref, x2d, False)
    t_ours, t_ref = [], []
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        t_ours.append(timed(ours, x3d, True, device))
        t_ref.append(timed(ref, x2d, False, device))
    m_ours, m_ref = statistics.median(t_ours), statistics.median(t_ref)
    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} "
          f"tokens={n_ours} repeats={args.repeats} warmup={args.warmup}")
    print(f"tapct_vit3d tap_s_3d (B,1,12,96,96): median {m_ours * 1e3:.1f} ms "
          f"(min {min(t_ours) * 1e3:.1f})")
    print(f"timm ViT-S/8 reg4   (B,1,96,288):   median {m_ref * 1e3:.1f} ms "
          f"(min {min(t_ref) * 1e3:.1f})")
    print(f"ratio ours/timm: {m_ours / m_ref:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
