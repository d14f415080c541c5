"""benchmarks/bench_pretrain_gpu.py runs on the CPU with tiny sizes (so it cannot rot)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_pretrain_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_pretrain_gpu", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_times_the_real_step_on_cpu(tmp_path, capsys, tiny_sets):
    bench = _load()
    kept = [s for s in tiny_sets if not s.startswith(("checkpoint", "log_every"))]
    sets = [a for s in kept for a in ("--set", s)]
    out = tmp_path / "bench.json"
    argv = [
        "--device",
        "cpu",
        "--config",
        "demo",
        "--preset",
        "tap_nano_3d",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--count-steps",
        "1",
        "--workers",
        "0",
        "--json",
        str(out),
        *sets,
    ]
    assert bench.main(argv) == 0
    r = json.loads(out.read_text())
    assert r["device"] == "cpu" and r["model"] == "tap_nano_3d" and r["batch_size"] == 2
    assert r["samples_per_s"] > 0 and r["gflop_per_sample"] > 0
    assert set(r["phase_ms"]) == {"data", "augment", "forward", "backward", "optimizer"}
    assert all(v > 0 for v in r["phase_ms"].values())
    assert 0.5 < sum(r["phase_share"].values()) <= 1.0 + 1e-6
    assert r["host_reads_per_step"] is not None and r["fraction_of_bf16_peak"] is None
    assert "samples/s" in capsys.readouterr().out


def test_sample_flops_of_tap_b_3d_match_the_papers_order():
    from tapct_app.pretrain import resolve_pretrain_config
    from tapct_app.train.build import objective_config
    from tapct_vit3d import create_model

    bench = _load()
    cfg = resolve_pretrain_config("tap_b_3d", ["unused"])
    flops = bench.sample_flops(cfg, create_model("tap_b_3d"), objective_config(cfg))
    assert 5e12 < flops < 9e12  # the paper's ~6.9 TFLOP per sample (issue 10)
