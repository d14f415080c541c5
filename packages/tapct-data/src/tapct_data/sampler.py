"""The one data order of pretraining: global sample indices per iteration, rank and micro-batch.

The sample index of element ``j`` of micro-batch ``a`` on rank ``r`` at iteration ``it`` is
``samples_seen + (it - start) * global_batch + (r * accumulation_steps + a) * batch + j``
with ``global_batch = batch * accumulation_steps * world_size``. With a map-style dataset
whose sample ``k`` is a pure function of ``(seed, k)`` (`PretrainSlabDataset`), resuming
continues the data stream exactly (DINOv2's resume does not) and a run on 2 processes sees
the same samples as one process accumulating 2 micro-batches.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler

__all__ = ["IterationBatchSampler"]


class IterationBatchSampler(Sampler[list[int]]):
    """Yield this rank's micro-batches of global sample indices, iteration by iteration.

    Use as ``DataLoader(dataset, batch_sampler=sampler)``; the order is the same for any
    ``num_workers``.

    Args:
        start_iteration: First iteration to yield.
        end_iteration: One past the last iteration.
        samples_seen: Global sample index at ``start_iteration``.
        batch_size: Samples per micro-batch.
        accumulation_steps: Micro-batches per iteration on this rank.
        rank: This process's rank.
        world_size: Number of processes.

    Raises:
        ValueError: non-positive sizes or a rank outside ``[0, world_size)``.
    """

    def __init__(
        self,
        start_iteration: int,
        end_iteration: int,
        samples_seen: int,
        batch_size: int,
        accumulation_steps: int = 1,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or accumulation_steps < 1 or world_size < 1:
            raise ValueError(
                f"batch_size, accumulation_steps, world_size must be >= 1, got "
                f"{batch_size}, {accumulation_steps}, {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank}, {world_size}")
        self.start, self.end = int(start_iteration), int(end_iteration)
        self.samples_seen = int(samples_seen)
        self.batch_size, self.accum = int(batch_size), int(accumulation_steps)
        self.rank, self.world_size = int(rank), int(world_size)

    @property
    def global_batch(self) -> int:
        """Samples per iteration over all ranks and micro-batches."""
        return self.batch_size * self.accum * self.world_size

    def __len__(self) -> int:
        return max(0, self.end - self.start) * self.accum

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start, self.end):
            base = self.samples_seen + (it - self.start) * self.global_batch
            for a in range(self.accum):
                first = base + (self.rank * self.accum + a) * self.batch_size
                yield list(range(first, first + self.batch_size))
