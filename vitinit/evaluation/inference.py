"""Batched, sharded inference over a dataset into a :class:`~vitinit.evaluation.coco.COCOEvaluator`.

The shape of detectron2's ``inference_on_dataset`` with its ``InferenceSampler``: each process takes one
contiguous block of the images, runs the model in batches fed by data-loader workers, and the evaluator
gathers every process's results in rank order, so the merged results are exactly the unsharded run's, in the
same order (COCO val's 5000 images split over N GPUs cost 1/N of the time, and never a duplicate).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from vitinit.evaluation.coco import COCOEvaluator


def shard_indices(size: int, rank: int, world_size: int) -> range:
    """The contiguous block of ``range(size)`` that process ``rank`` of ``world_size`` evaluates.

    Blocks of ``ceil(size / world_size)`` (the last ones shorter or empty), as detectron2's
    ``InferenceSampler``: concatenated in rank order they are ``range(size)``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    block = -(-size // world_size)
    return range(min(size, rank * block), min(size, (rank + 1) * block))


def _process_group() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def inference_on_dataset(
    model: torch.nn.Module,
    dataset: Dataset,
    evaluator: COCOEvaluator,
    *,
    device: torch.device | str,
    collate_fn: Callable,
    indices: Sequence[int] | None = None,
    batch_size: int = 1,
    num_workers: int = 0,
    amp: str | None = None,
    shard: tuple[int, int] | None = None,
) -> COCOEvaluator:
    """Run ``model`` (eval mode, no grad) on this process's shard of ``indices`` and gather the results.

    Args:
        indices: the dataset items to evaluate (default all, e.g. the first ``eval.max_images``).
        batch_size: images per forward on each process; ``num_workers``: data-loader processes.
        amp: None (the default) runs in float32, as detectron2's ``do_test``; "bf16" runs the whole forward
            under bf16 autocast (backbone, RPN and heads; only box decoding and the losses stay float32),
            which is faster but moves scores by ~1e-3 and can reorder detections.
        shard: ``(rank, world_size)``; default the process group's. Gathering happens only under a group.
    Returns the evaluator, holding every process's results (call ``evaluate`` on one process).
    """
    device = torch.device(device)
    rank, world = shard or _process_group()
    indices = list(range(len(dataset))) if indices is None else list(indices)  # type: ignore[arg-type]
    mine = [indices[i] for i in shard_indices(len(indices), rank, world)]
    loader = DataLoader(
        Subset(dataset, mine), batch_size=batch_size, collate_fn=collate_fn, num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, targets in loader:
                images = [im.to(device, non_blocking=True) for im in images]
                with autocast:
                    outputs = model(images)
                evaluator.process(targets, outputs)
    finally:
        model.train(was_training)
    evaluator.gather()
    return evaluator
