"""The gallery in TensorBoard at every evaluation, so learning can be watched image by image.

:class:`TensorBoardGallery` is called by the benchmark after each evaluation has written its detections
(``eval/iter_*/``); it draws the same fixed val images as the run's report (:mod:`vitinit.analysis.gallery`)
and adds them as images whose step is the iteration. Without tensorboard installed there is no writer and
it does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitinit.analysis.gallery import NUM_IMAGES, gallery_images
from vitinit.errors import VitinitError

logger = logging.getLogger(__name__)


class TensorBoardGallery:
    """``gallery(iteration, eval_dir)`` adds ``gallery/val_<image id>`` images to a SummaryWriter.

    Args:
        writer: the writer, or a callable returning it (None when TensorBoard is unavailable), since the
            trainer's metrics hook opens its writer only when training starts.
        annotations, image_dir: the val set.
        n: images per evaluation.
    """

    def __init__(
        self,
        writer: Any | Callable[[], Any],
        annotations: str | Path,
        image_dir: str | Path | None = None,
        *,
        n: int = NUM_IMAGES,
    ) -> None:
        self._writer, self.annotations, self.image_dir, self.n = writer, annotations, image_dir, n
        self.failed = False

    @property
    def writer(self) -> Any:
        if hasattr(self._writer, "add_image") or not callable(self._writer):
            return self._writer
        return self._writer()

    def __call__(self, iteration: int, eval_dir: str | Path) -> int:
        """Add this evaluation's pictures; returns how many were added (0 without a writer)."""
        writer = self.writer
        if writer is None or self.failed:
            return 0
        try:
            pictures = gallery_images(self.annotations, eval_dir, image_dir=self.image_dir, n=self.n)
        except VitinitError as e:  # a picture is a bonus: say so once, never stop training for it
            logger.warning("no TensorBoard gallery: %s", e)
            self.failed = True
            return 0
        for image_id, picture in pictures:
            writer.add_image(f"gallery/val_{image_id:06d}", picture, iteration, dataformats="CHW")
        writer.flush()
        return len(pictures)
