"""Validation Chamfer-L1: the evaluation metric itself (eval.metrics.chamfer_l1, Occupancy
Networks' definition, with its EMPTY_SCORES for an empty mesh), so that ``val/chamfer_l1``
and ``cdc-aug eval`` measure the same quantity; validation samples as many points on the
reconstruction as it has ground-truth surface points (``val_points``), eval 100k."""

from eval.metrics import chamfer_l1

__all__ = ["chamfer_l1"]
