"""The global batch a recipe means, cut into per-GPU micro-batches and gradient-accumulation steps.

``train.batch_size`` is the global batch of one optimizer step (the paper's 64), whatever the number of
processes: each of ``world_size`` processes runs ``steps`` micro-batches of ``images_per_gpu`` images and
the optimizer steps once, so ``world_size × images_per_gpu × steps == batch_size``. Each micro-batch's loss is
divided by ``steps`` and DDP averages over processes, so the update is the one of ``world_size × steps``
processes of ``images_per_gpu`` images each — detectron2's semantics, where every GPU normalizes its own
losses — with the same lr and schedule (iteration = optimizer step).

BatchNorm under accumulation: BN in the FPN and heads normalizes each micro-batch with that micro-batch's
statistics (across processes with SyncBN), and its running statistics move once per micro-batch with the
layer's momentum. That is what detectron2 does with one or two images per GPU and plain BN. Statistics over
the whole global batch would need every image in one forward (or a second pass); the paper's SyncBN covers
the images its GPUs hold at once, which accumulation on fewer GPUs cannot reproduce, so we keep
per-micro-batch BN and say so (``tests/test_accumulation.py`` checks both behaviours).
"""

from __future__ import annotations

from vitinit.errors import ConfigError

# detectron2's published ViTDet ViT-B figure (projects/ViTDet/README.md): 10.9 GB per A100 at 1 image per GPU
# (1024 px, fp16 AMP). Used as the whole per-image cost, fixed part included, so the choice stays on the safe
# side; never reported as a measurement.
VITB_BYTES_PER_IMAGE = int(10.9e9)
DEFAULT_IMAGES_PER_GPU = 2  # without a memory figure: what fits a ViT-B at 1024 px on a 24 GB card
MEMORY_HEADROOM = 0.9  # allocator fragmentation and the CUDA context


def accumulation_plan(
    global_batch: int,
    world_size: int,
    images_per_gpu: int | None = None,
    gpu_memory: int | None = None,
    *,
    bytes_per_image: int = VITB_BYTES_PER_IMAGE,
) -> tuple[int, int]:
    """``(images_per_gpu, accumulation_steps)`` for ``global_batch`` images over ``world_size`` processes.

    ``images_per_gpu`` given: it must divide the per-process share. ``None``: the largest divisor of the share
    that fits ``gpu_memory`` bytes (``bytes_per_image`` each), or :data:`DEFAULT_IMAGES_PER_GPU` (or 1) when
    the memory is unknown (CPU, or not asked).

    Example:
        >>> accumulation_plan(64, 8, gpu_memory=80 * 2**30)  # 8 × 80 GB: 4 images per GPU, 2 steps
        (4, 2)
    """
    if global_batch < 1 or world_size < 1:
        raise ConfigError(f"train.batch_size ({global_batch}) and processes ({world_size}) must be ≥ 1")
    if global_batch % world_size:
        raise ConfigError(f"train.batch_size {global_batch} is not divisible by {world_size} processes")
    share = global_batch // world_size
    if images_per_gpu is not None:
        if images_per_gpu < 1 or share % images_per_gpu:
            raise ConfigError(
                f"train.images_per_gpu {images_per_gpu} does not divide the {share} images per process "
                f"(train.batch_size {global_batch} over {world_size} processes)"
            )
        return images_per_gpu, share // images_per_gpu
    if gpu_memory is not None:
        fit = max(1, int(gpu_memory * MEMORY_HEADROOM // bytes_per_image))
    else:
        fit = DEFAULT_IMAGES_PER_GPU
    ipg = max(d for d in range(1, min(fit, share) + 1) if share % d == 0)
    return ipg, share // ipg
