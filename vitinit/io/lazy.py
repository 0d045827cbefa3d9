"""A tensor known by shape and dtype before its bytes are read: what readers produce and writers stream.

Every checkpoint reader returns these, so a conversion can stream a multi-GB file one tensor at a time
(``vitinit.canonical`` re-exports it as part of the canonical representation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LazyTensor:
    """A tensor known by shape and dtype, materialized only when :meth:`load` is called.

    ``read_into``, when a reader gives it, copies the tensor's bytes as a file stores them (row-major,
    little-endian: safetensors' layout) from byte ``start`` into a caller's buffer: a writer streams such a
    tensor through a few reused buffers instead of one fresh allocation per tensor (:mod:`vitinit.io.chunks`).
    Only a tensor that is one run of bytes in its file has it; :meth:`map` drops it.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    loader: Callable[[], torch.Tensor] = field(repr=False, compare=False)
    read_into: Callable[[memoryview, int], None] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, tensor: torch.Tensor) -> LazyTensor:
        return cls(tuple(tensor.shape), tensor.dtype, lambda: tensor)

    def load(self) -> torch.Tensor:
        t = self.loader()
        if tuple(t.shape) != self.shape:  # a loader that disagrees with its declared shape is a bug
            raise RuntimeError(f"lazy tensor loaded shape {tuple(t.shape)}, declared {self.shape}")
        return t

    def map(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        shape: tuple[int, ...] | None = None,
        dtype: torch.dtype | None = None,
    ) -> LazyTensor:
        """A lazy tensor computed from this one; declare ``shape``/``dtype`` when ``fn`` changes them."""
        return LazyTensor(shape or self.shape, dtype or self.dtype, lambda: fn(self.load()))

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


