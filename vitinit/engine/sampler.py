"""A deterministic, resumable stream of training samples.

Resuming a killed run must reach the same weights as an uninterrupted one, so the sample order *and* each
sample's augmentation are pure functions of (seed, position in the stream): position ``p`` of the global
stream is sample ``perm_e[p mod n]`` of epoch ``e = p // n``, and its augmentation runs under the seed
``(seed, p)``. Rank ``r`` of ``W`` takes every global batch's ``r``-th slice, so the same stream is cut the
same way whatever the iteration we restart at.

With gradient accumulation over ``S`` micro-batches a global batch is cut into ``S`` consecutive chunks of
``W × micro`` positions, and rank ``r`` takes the ``r``-th slice of each: every optimizer step still sees
exactly the global batch ``it × B .. (it + 1) × B - 1``, whatever ``W`` and ``S`` are.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


class StreamSampler(Sampler[list[tuple[int, int]]]):
    """Per-rank (micro-)batches of ``(stream position, dataset index)`` from iteration ``start_iter`` on,
    forever: ``accumulation_steps`` micro-batches per iteration."""

    def __init__(
        self,
        size: int,
        *,
        batch_size: int,
        seed: int = 0,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        accumulation_steps: int = 1,
    ) -> None:
        if batch_size % (world_size * accumulation_steps):
            raise ValueError(
                f"total batch size {batch_size} is not divisible by {world_size} processes × "
                f"{accumulation_steps} accumulation steps"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.accumulation_steps = accumulation_steps
        self.start_iter, self.rank, self.world_size, self.shuffle = start_iter, rank, world_size, shuffle
        self._perm_epoch, self._perm = -1, torch.arange(size)

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if self.shuffle and epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.size, generator=g), epoch
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        micro = self.batch_size // self.world_size // self.accumulation_steps
        it = self.start_iter
        while True:
            for step in range(self.accumulation_steps):
                first = it * self.batch_size + (step * self.world_size + self.rank) * micro
                yield [(p, self._index(p)) for p in range(first, first + micro)]
            it += 1


class SeededSamples(Dataset):
    """Wraps a dataset whose transform draws from torch's global RNG: each sample runs under its own seed.

    The global RNG is forked, so seeding a sample does not disturb the model's random draws (RPN sampling,
    drop path) in the main process.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]):
        position, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + position)
            return self.dataset[index]
