"""Modeled H100 throughput of one TAP-B-3D pretraining step (FLOPs and bytes per phase).

No GPU needed: an analytic roofline of the step as built (bf16 residual stream, subset
drop path 0.2, chunked 65,536-prototype cross-entropies, fused AdamW, compiled blocks),
with every assumption printed. Each phase's time is ``FLOPs / (peak x efficiency) +
bytes / (bandwidth x efficiency)`` (no overlap of compute and memory traffic: a
conservative sum). Run:

    uv run python benchmarks/model_step_throughput.py [--checkpoint-every N] [--micro-batch B]

Sources of the constants: H100 SXM datasheet (989 TFLOP/s dense bf16, 3.35 TB/s HBM3);
efficiencies are typical measured fractions (large bf16 GEMMs ~70 % of peak;
FlashAttention-2 at head dim 64 ~330 TFLOP/s forward, ~270 backward; elementwise
kernels ~75 % of bandwidth). The paper's figure for comparison: 19.5 samples/s per H100
(3,648 H100-hours for 125,000 x 2,048 samples).
"""

from __future__ import annotations

import argparse

PEAK_FLOPS = 989e12  # H100 SXM dense bf16
PEAK_BW = 3.35e12  # HBM3 bytes/s
EFF_GEMM, EFF_ATTN_FWD, EFF_ATTN_BWD, EFF_BW = 0.70, 330 / 989, 270 / 989, 0.75

E, DEPTH, MLP, K, HIDDEN, BOTTLENECK = 768, 12, 4, 65536, 2048, 256
PATCH = (4, 8, 8)
GLOBAL, LOCAL, N_GLOBAL, N_LOCAL = (12, 224, 224), (12, 96, 96), 2, 8
PREFIX = 5  # cls + 4 registers
DROP_KEEP = 0.8  # subset drop path 0.2: branches computed on 80 % of the samples
MASKED_PER_SAMPLE = N_GLOBAL * 0.5 * 0.3  # crops masked with p 0.5, ratio U(0.1, 0.5)
# Non-matmul HBM traffic per token, channel and block, bf16 stream, compiled blocks
# (GEMM and attention kernels' own reads/writes overlap their compute and are not
# counted). Forward: LN1 (+ subset gather) read 2 write 2; residual scatter fused with
# LN2: read x 2 + branch 2, write x' 2 + LN2 out 2; GELU (4E wide) read 8 write 8;
# residual 2 read 4 write 2: 34 B. Backward: two LN backwards 2 x 8, GELU backward
# read 8 + 8 write 8, residual gathers/scatters 12: 52 B. Eager code today: ~394 B.
BYTES_FWD, BYTES_BWD = 34.0, 52.0
BYTES_STUDENT_FWD_BWD, BYTES_TEACHER_FWD = BYTES_FWD + BYTES_BWD, BYTES_FWD
# 65,536-prototype heads/losses per row and prototype: teacher logits bf16 write+read,
# fp32 targets write + read fwd + read bwd (16 B); student logits write, read fwd, read
# bwd, grad write+read (10 B); the chunked CE keeps no fp32 logits
BYTES_PER_ROW_PROTOTYPE_TEACHER, BYTES_PER_ROW_PROTOTYPE_STUDENT = 16.0, 10.0


def tokens(size: tuple[int, int, int]) -> int:
    """Tokens of one crop, prefix included."""
    t, h, w = (s // p for s, p in zip(size, PATCH))
    return t * h * w + PREFIX


def block_flops(n: int) -> tuple[float, float]:
    """Forward (linear, attention) FLOPs of one block per token of an n-token sequence."""
    return 2 * (3 + 1 + 2 * MLP) * E * E, 4.0 * n * E


def head_flops() -> float:
    """Forward FLOPs of one DINO/iBOT head row."""
    return 2.0 * (E * HIDDEN + HIDDEN * HIDDEN + HIDDEN * BOTTLENECK + BOTTLENECK * K)


def model(checkpoint_every: int, micro_batch: int, samples_per_step: int) -> None:
    """Print the per-phase table and the modeled samples/s."""
    crops = [(N_GLOBAL, tokens(GLOBAL)), (N_LOCAL, tokens(LOCAL))]
    recompute = 0.0 if checkpoint_every == 0 else 1.0 / checkpoint_every
    rows: list[tuple[str, float, float, float]] = []  # name, gemm, attention, bytes

    def add(name: str, gemm: float, attn: float, nbytes: float) -> None:
        rows.append((name, gemm, attn, nbytes))

    # teacher: global crops only, no drop path
    n_g = tokens(GLOBAL)
    lin, att = block_flops(n_g)
    tok_t = N_GLOBAL * n_g
    add(
        "teacher backbone fwd",
        tok_t * DEPTH * lin,
        tok_t * DEPTH * att,
        tok_t * E * DEPTH * BYTES_TEACHER_FWD,
    )
    add(
        "teacher heads + targets",
        (N_GLOBAL + MASKED_PER_SAMPLE * n_g) * head_flops(),
        0.0,
        (N_GLOBAL + MASKED_PER_SAMPLE * n_g) * K * BYTES_PER_ROW_PROTOTYPE_TEACHER,
    )
    # student
    s_lin = s_att = s_bytes = 0.0
    for count, n in crops:
        lin, att = block_flops(n)
        s_lin += count * n * DEPTH * lin * DROP_KEEP
        s_att += count * n * DEPTH * att * DROP_KEEP
        s_bytes += count * n * E * DEPTH * BYTES_STUDENT_FWD_BWD * DROP_KEEP
    fwd_share = BYTES_FWD / BYTES_STUDENT_FWD_BWD
    add("student backbone fwd", s_lin, s_att, s_bytes * fwd_share)
    add("student backbone bwd", 2 * s_lin, 2.5 * s_att, s_bytes * (1 - fwd_share))
    if recompute:
        add(
            f"recompute (checkpoint every {checkpoint_every})",
            recompute * s_lin,
            recompute * s_att,
            recompute * s_bytes * fwd_share,
        )
    rows_s = N_GLOBAL + N_LOCAL + MASKED_PER_SAMPLE * n_g
    add(
        "student heads + losses fwd+bwd",
        3 * rows_s * head_flops(),
        0.0,
        rows_s * K * BYTES_PER_ROW_PROTOTYPE_STUDENT,
    )
    params = 86e6 + 2 * 23.3e6  # backbone + 2 heads
    # fused AdamW (p, g, m, v read; p, m, v write: 28 B) + EMA (12 B) + clipping (4 B)
    add("optimizer + EMA (per sample)", 0.0, 0.0, params * 44 / samples_per_step)

    total = 0.0
    print(f"{'phase':38s} {'GFLOP':>9s} {'GB':>8s} {'ms':>8s}")
    for name, gemm, attn, nbytes in rows:
        ms = 1e3 * (gemm / (PEAK_FLOPS * EFF_GEMM) + nbytes / (PEAK_BW * EFF_BW))
        fwd = "fwd" in name and "bwd" not in name
        ms += 1e3 * attn / (PEAK_FLOPS * (EFF_ATTN_FWD if fwd else EFF_ATTN_BWD))
        total += ms
        print(f"{name:38s} {(gemm + attn) / 1e9:9.1f} {nbytes / 1e9:8.2f} {ms:8.2f}")
    flops = sum(g + a for _, g, a, _ in rows)
    print(
        f"{'total per sample':38s} {flops / 1e9:9.1f} {sum(r[3] for r in rows) / 1e9:8.2f} "
        f"{total:8.2f}"
    )
    print(
        f"modeled: {1e3 / total:.1f} samples/s per H100 (micro-batch {micro_batch}, "
        f"{samples_per_step} samples per optimizer step), {flops * 1e3 / total / PEAK_FLOPS:.0%}"
        " of bf16 peak"
    )


def main() -> None:
    """Parse the options and print the model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="0: no activation checkpointing; N: every N-th block",
    )
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--samples-per-step", type=int, default=256)
    args = parser.parse_args()
    print(
        f"assumptions: peak {PEAK_FLOPS / 1e12:.0f} TFLOP/s, {PEAK_BW / 1e12:.2f} TB/s; "
        f"efficiency GEMM {EFF_GEMM:.0%}, attention fwd {EFF_ATTN_FWD:.0%} / bwd "
        f"{EFF_ATTN_BWD:.0%}, memory {EFF_BW:.0%}; attention bwd = 2.5 x fwd FLOPs; "
        f"{BYTES_STUDENT_FWD_BWD:.0f} B (student fwd+bwd) / {BYTES_TEACHER_FWD:.0f} B "
        "(teacher fwd) non-matmul traffic per token, channel and block; compute and "
        "memory time added, not overlapped"
    )
    model(args.checkpoint_every, args.micro_batch, args.samples_per_step)


if __name__ == "__main__":
    main()
