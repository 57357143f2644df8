"""Evaluation of single-view reconstructions (Occupancy Networks protocol) and the report.

``eval.metrics``: point-set and mesh metrics; ``eval.silhouette``: 2D IoU;
``eval.evaluate``: a model over a render or generate directory; ``eval.report``: tables,
plots and image grids over several evaluation directories.
"""
