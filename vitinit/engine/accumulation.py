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

# Training memory per image by model size, from detectron2's published ViTDet table
# (projects/ViTDet/README.md, COCO Mask R-CNN, 1024 px, fp16 AMP, 1 image per A100): ViT-B 10.9 GB, ViT-L
# 20.9 GB, ViT-H 31.5 GB (its 75-epoch row; ViTDet's ViT-H has patch 16, 64×64 tokens: at patch 14
# vitinit's ViT-H has 1.3× the tokens, so its figure is UNCONFIRMED there). Each is used as the whole
# per-image cost, fixed part included, so the choice stays on the safe side; never reported as a measurement.
GB = 10**9
BYTES_PER_IMAGE = {"vit-b": int(10.9 * GB), "vit-l": int(20.9 * GB), "vit-h": int(31.5 * GB)}
VITB_BYTES_PER_IMAGE = BYTES_PER_IMAGE["vit-b"]
DEFAULT_IMAGES_PER_GPU = 2  # without a memory figure: what fits a ViT-B at 1024 px on a 24 GB card
MEMORY_HEADROOM = 0.9  # allocator fragmentation and the CUDA context
TYPICAL_GPU_GB = (24, 40, 80)  # the plans --dry-run prints without a GPU: 24 GB cards, A100 40 / 80 GB


def bytes_per_image(variant: str, backbone_type: str = "vit") -> tuple[int, str]:
    """Training memory per 1024-px image for a model size, and where the figure comes from.

    ViT-B / L / H: ViTDet's published figures (:data:`BYTES_PER_IMAGE`). Any other model (a custom ViT, the
    ResNet-101 baseline) uses ViT-B's, UNCONFIRMED: detectron2 publishes no memory for its R-101 LSJ baseline.
    """
    if backbone_type == "vit" and variant in BYTES_PER_IMAGE:
        note = "UNCONFIRMED at patch 14" if variant == "vit-h" else "ViTDet README"
        return BYTES_PER_IMAGE[variant], f"{variant} {BYTES_PER_IMAGE[variant] / GB:.1f} GB/image ({note})"
    what = "resnet101" if backbone_type != "vit" else variant
    return VITB_BYTES_PER_IMAGE, f"{what}: ViT-B's {VITB_BYTES_PER_IMAGE / GB:.1f} GB/image (UNCONFIRMED)"


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
    the memory is unknown (CPU, or not asked). ``bytes_per_image``: the model's (:func:`bytes_per_image`).

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


def describe_plan(
    global_batch: int,
    world_size: int,
    images_per_gpu: int | None,
    gpu_memory: int | None,
    *,
    bytes_per_image: int = VITB_BYTES_PER_IMAGE,
    source: str = "",
) -> str:
    """One line: ``images per GPU × accumulation steps × GPUs = batch``, and how the micro-batch was chosen.

    Example:
        >>> describe_plan(64, 8, None, 80 * GB, source="vit-b 10.9 GB/image")
        '8 GPUs × 4 images × 2 steps = 64: 80 GB fits 6 images (vit-b 10.9 GB/image, 90% usable); 4 divides 8'
    """
    ipg, steps = accumulation_plan(global_batch, world_size, images_per_gpu, gpu_memory,
                                   bytes_per_image=bytes_per_image)
    head = f"{world_size} GPU{'s' if world_size > 1 else ''} × {ipg} image{'s' if ipg > 1 else ''} × " \
           f"{steps} step{'s' if steps > 1 else ''} = {global_batch}"
    share = global_batch // world_size
    if images_per_gpu is not None:
        return f"{head}: train.images_per_gpu={images_per_gpu}"
    if gpu_memory is None:
        why = f"GPU memory unknown, default {DEFAULT_IMAGES_PER_GPU} images"
    else:
        fit = int(gpu_memory * MEMORY_HEADROOM // bytes_per_image)
        fits = (
            f"fits {fit} image{'s' if fit > 1 else ''}" if fit else "fits no image: 1, may run out of memory"
        )
        why = f"{gpu_memory / GB:.0f} GB {fits} ({source}, {MEMORY_HEADROOM:.0%} usable)"
    return f"{head}: {why}; {ipg} divides {share}"
