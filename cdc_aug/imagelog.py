"""Images to the training loggers: TensorBoard's ``add_image``, or a logger's own
``log_image`` (Weights & Biases, Neptune, ...); loggers without images (CSV) are skipped."""

from __future__ import annotations

import numpy as np


def log_image(loggers, tag: str, image, step: int) -> None:
    """``image``: a PIL image or an HxWx3 uint8 array."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):  # TensorBoardLogger's SummaryWriter
            experiment.add_image(tag, arr, step, dataformats="HWC")
        elif hasattr(logger, "log_image"):
            logger.log_image(key=tag, images=[arr], step=step)
