"""GPU pretraining throughput of TAP-B-3D at the paper's crops, and the fraction of bf16 peak.

    uv run python benchmarks/bench_pretrain_gpu.py [--batch-size 32] [--steps 20]

Runs full training steps (multi-crop + masking on the GPU, DINOv2 objective with student,
EMA teacher, DINO/iBOT heads of 65,536 prototypes, bf16 autocast, AdamW, clipping) with
2 x (12, 224, 224) global and 8 x (12, 96, 96) local crops (paper Table 7), and prints
samples/s per GPU and the model FLOP utilisation: analytic FLOPs per step divided by
step time and by the GPU's dense bf16 peak. Exits with a message when CUDA is missing.

FLOPs per step (matmul FLOPs, 2 per multiply-add, backward = 2 x forward):
- ViT forward per crop with N tokens (incl. cls + 4 registers), width E, depth L:
  ``L * (24 N E^2 + 4 N^2 E)`` plus the patch embedding ``2 N_p E * (4*8*8)``;
- heads: 3-layer MLP E->2048->2048->256 plus 256 -> 65,536 prototypes per head input.
The student runs 2 global + 8 local crops forward and backward (x3), the teacher the 2
global crops forward only (x1).
"""

from __future__ import annotations

import argparse
import sys
import time

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "B200": 2250.0}


def vit_flops(tokens: int, patches: int, width: int, depth: int, patch_voxels: int) -> float:
    """Forward matmul FLOPs of a ViT on one crop."""
    blocks = depth * (24 * tokens * width**2 + 4 * tokens**2 * width)
    return blocks + 2 * patches * width * patch_voxels


def head_flops(
    n: int, width: int, hidden: int = 2048, bottleneck: int = 256, prototypes: int = 65536
) -> float:
    """Forward FLOPs of a DINO head on n inputs."""
    return (
        2 * n * (width * hidden + hidden * hidden + hidden * bottleneck + bottleneck * prototypes)
    )


def step_flops(
    batch: int, width: int = 768, depth: int = 12, registers: int = 4, mask_fraction: float = 0.15
) -> float:
    """Analytic FLOPs of one training step per GPU."""
    g_patches = (12 // 4) * (224 // 8) * (224 // 8)  # 2352
    l_patches = (12 // 4) * (96 // 8) * (96 // 8)  # 432
    g = vit_flops(g_patches + 1 + registers, g_patches, width, depth, 256)
    loc = vit_flops(l_patches + 1 + registers, l_patches, width, depth, 256)
    student_fwd = batch * (2 * g + 8 * loc)
    student_fwd += head_flops(batch * 10, width)  # DINO head on every crop's cls
    student_fwd += head_flops(int(batch * 2 * g_patches * mask_fraction), width)  # iBOT
    teacher_fwd = batch * 2 * g + head_flops(batch * 2, width)
    teacher_fwd += head_flops(int(batch * 2 * g_patches * mask_fraction), width)
    return 3 * student_fwd + teacher_fwd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("bench_pretrain_gpu: no CUDA device; nothing to measure (run it on a GPU machine)")
        return 0
    from tapct_app.pretrain import resolve_pretrain_config
    from tapct_app.train.engine import (
        _Augmenter,
        _build_optimizer,
        build_backbone,
        build_objective,
        build_optim_config,
    )

    device = torch.device("cuda")
    cfg = resolve_pretrain_config("tap_b_3d", ["unused"], batch_size=args.batch_size)
    backbone = build_backbone(cfg)
    objective = build_objective(cfg, backbone).to(device)
    optim_cfg = build_optim_config(cfg)
    optimizer = _build_optimizer(optim_cfg, objective)
    for g in optimizer.param_groups:
        g["lr"], g["weight_decay"] = 1e-4, 0.04
    augment = _Augmenter(cfg, tuple(backbone.patch_size))
    B = args.batch_size
    slabs = torch.randn(B, 1, 12, 224, 224, device=device)

    def step(i: int) -> None:
        batch = augment(slabs, 1000 + i)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = objective(
                batch["collated_global_crops"],
                batch.get("collated_local_crops"),
                batch["collated_masks"].bool(),
                0.04,
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        objective.clip_gradients(3.0)
        optimizer.step()
        objective.update(0.992)

    for i in range(args.warmup):
        step(i)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(args.warmup + i)
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    flops = step_flops(B)
    print(f"GPU: {name}; tap_b_3d, batch {B}/GPU, 2x(12,224,224) + 8x(12,96,96), bf16")
    print(f"step: {dt * 1000:.1f} ms; samples/s per GPU: {B / dt:.1f}")
    tflops = flops / dt / 1e12
    print(f"analytic FLOPs/step: {flops / 1e12:.2f} TFLOP; achieved {tflops:.1f} TFLOP/s")
    if peak:
        print(f"fraction of dense bf16 peak ({peak:.0f} TFLOP/s): {flops / dt / 1e12 / peak:.1%}")
    print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
