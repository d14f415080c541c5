"""One rank of the 2-process DDP test (run by test_distributed.py, not collected).

Usage: python _ddp_worker.py RANK WORLD_SIZE STORE_PATH OUT_PATH (or ``run_rank`` in
process). Each rank takes its share of a 4-image batch, runs the DDP-wrapped objective, an SGD step
and ``update``, for both centering modes, and saves grads and state for the parent.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tapct_ssl import DINOv2Objective, DINOv2ObjectiveConfig

from conftest import TinyBackbone, collate, make_crops

CONFIG = DINOv2ObjectiveConfig(
    dino_head_n_prototypes=32,
    dino_head_hidden_dim=24,
    dino_head_bottleneck_dim=8,
    ibot_head_n_prototypes=40,
    ibot_head_hidden_dim=24,
    ibot_head_bottleneck_dim=8,
    koleo_loss_weight=0.0,  # a per-process batch statistic (as in DINOv2)
)
N_IMAGES = 4


def run(mode: str, images: list[int], ddp: bool) -> dict[str, object]:
    """Two optimizer steps on ``images`` of the shared batch; returns grads and state."""
    torch.manual_seed(0)
    objective = DINOv2Objective(TinyBackbone(), attrs.evolve(CONFIG, centering=mode)).double()
    model = DistributedDataParallel(objective) if ddp else objective
    optimizer = torch.optim.SGD([p for p in objective.parameters() if p.requires_grad], lr=0.1)
    grads = []
    for step in range(2):
        g, locs, m = make_crops(N_IMAGES, n_local=8, seed=10 + step, dtype=torch.float64)
        pick = [[c[i] for i in images] for c in (*g, *locs, *m)]
        g, locs, m = (
            [torch.stack(x) for x in pick[:2]],
            [torch.stack(x) for x in pick[2:10]],
            [torch.stack(x) for x in pick[10:]],
        )
        model(*collate(g, locs, m), teacher_temp=0.04).loss.backward()
        grads.append({n: p.grad.clone() for n, p in objective.student.named_parameters()})
        optimizer.step()
        optimizer.zero_grad()
        objective.update(0.8)
    return {"grads": grads, "state": objective.state_dict()}


def run_rank(rank: int, world: int, store_path: str) -> dict[str, dict[str, object]]:
    """Join the gloo group as ``rank`` and run both modes on this rank's images."""
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        per_rank = N_IMAGES // world
        images = list(range(rank * per_rank, (rank + 1) * per_rank))
        return {mode: run(mode, images, ddp=True) for mode in ("centering", "sinkhorn_knopp")}
    finally:
        dist.destroy_process_group()


def main() -> None:
    """Entry point of one rank launched as a separate process."""
    rank, world, store_path, out_path = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        sys.argv[3],
        sys.argv[4],
    )
    torch.set_num_threads(1)
    torch.save(run_rank(rank, world, store_path), out_path)


if __name__ == "__main__":
    main()
