"""How a recipe's global batch is split over GPUs: images per GPU × accumulation steps × GPUs.

The micro-batch comes from the recipe (``train.images_per_gpu``) or, when null, from the GPU's memory and
the model size's own memory per image (:func:`vitinit.engine.accumulation.bytes_per_image`).
``vitinit bench NAME --dry-run --gpus N`` prints the plan for this machine's GPU, or for a few typical GPU
memories when it has none.
"""

from __future__ import annotations

import torch

from vitinit.engine.accumulation import GB, TYPICAL_GPU_GB, accumulation_plan, bytes_per_image, describe_plan
from vitinit.recipes import RecipeLike, as_recipe


def memory_per_image(recipe: RecipeLike) -> tuple[int, str]:
    """The recipe's model's training memory per image, and where the figure comes from."""
    recipe = as_recipe(recipe)
    backbone_type = recipe.model.detector.get("backbone_type", "vit")
    return bytes_per_image(recipe.model.variant, backbone_type)


def batch_plan(recipe: RecipeLike, world_size: int, gpu_memory: int | None) -> tuple[int, int]:
    """``(images_per_gpu, accumulation_steps)``: ``recipe`` on ``world_size`` GPUs of ``gpu_memory`` bytes."""
    recipe = as_recipe(recipe)
    t = recipe.train
    per_image, _ = memory_per_image(recipe)
    return accumulation_plan(
        t.batch_size, world_size, t.images_per_gpu, gpu_memory, bytes_per_image=per_image
    )


def plan_lines(recipe: RecipeLike, gpus: int, gpu_memory: int | None = None) -> list[str]:
    """The plan on ``gpus`` GPUs of ``gpu_memory`` bytes; without it, this machine's CUDA GPU, else the plan
    for each of :data:`~vitinit.engine.accumulation.TYPICAL_GPU_GB`."""
    recipe = as_recipe(recipe)
    t = recipe.train
    per_image, source = memory_per_image(recipe)
    if gpu_memory is None and torch.cuda.is_available():
        gpu_memory = torch.cuda.get_device_properties(0).total_memory
    memories = [gpu_memory] if gpu_memory is not None else [g * GB for g in TYPICAL_GPU_GB]
    lines = []
    for memory in memories:
        line = describe_plan(t.batch_size, gpus, t.images_per_gpu, memory,
                             bytes_per_image=per_image, source=source)
        lines.append(line if gpu_memory is not None else f"{memory / GB:.0f} GB GPUs: {line}")
    return lines
