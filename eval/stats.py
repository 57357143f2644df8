"""Means with bootstrap confidence intervals over an experiment's evaluations.

An experiment trains every training set with several seeds (``svr-t050-s0``, ``-s1``, ...)
and scores each model on the same test views. A number in the report is the mean over
test shapes, views and seeds; its 95 % interval comes from a two-level bootstrap:

- views are nested in shapes: a shape's value is the mean over its evaluated views (the
  views of one shape are not independent samples of the test population, the shapes are);
- shapes are resampled with replacement (the population the question is about), and so
  are seeds (training randomness), independently, ``n_boot`` times; the interval is the
  2.5th and 97.5th percentile of the resampled means (percentile bootstrap).

A paired difference to the reference model (svr-clean) uses the same resampled shapes
and seed positions for both models, so shape difficulty cancels: Δ = model − reference
per (seed position, shape), then the same bootstrap. With 3 seeds, resampling seeds
widens the interval honestly but coarsely; more seeds make it finer.

Empty reconstructions are scored by the fixed penalty of eval.metrics (Chamfer-L1 √3,
IoU 0) and counted separately (``n_empty``), so a mean moved by empties is visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

SEED_SUFFIX = re.compile(r"-s(\d+)$")


def family_and_seed(model: str, train_seed: int | None = None) -> tuple[str, int | None]:
    """``svr-t050-s2`` -> (``svr-t050``, 2); a name without a seed suffix is its own family."""
    m = SEED_SUFFIX.search(model)
    if m:
        return model[: m.start()], int(m.group(1)) if train_seed is None else int(train_seed)
    return model, train_seed


@dataclass
class Cell:
    """One (model family, test domain): a seeds x shapes matrix of per-shape means."""

    values: np.ndarray  # (n_seeds, n_shapes), NaN where a seed lacks a shape
    shapes: list[str]
    seeds: list[int]
    n_views: int
    n_empty: int

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.values)) if np.isfinite(self.values).any() else float("nan")


def make_cell(rows_by_seed: dict[int, list[dict]], metric: str) -> Cell:
    """``rows_by_seed[seed]``: per_view.csv rows (dicts with ``synset``, ``model_id``,
    ``empty`` and the metric) of one model family on one domain."""
    seeds = sorted(rows_by_seed)
    shapes = sorted({f"{r['synset']}/{r['model_id']}" for rows in rows_by_seed.values() for r in rows})
    col = {s: i for i, s in enumerate(shapes)}
    total = np.zeros((len(seeds), len(shapes)))
    count = np.zeros((len(seeds), len(shapes)))
    n_views = n_empty = 0
    for i, seed in enumerate(seeds):
        for r in rows_by_seed[seed]:
            v = float(r[metric])
            n_views += 1
            n_empty += int(float(r.get("empty", 0) or 0))
            if np.isfinite(v):
                j = col[f"{r['synset']}/{r['model_id']}"]
                total[i, j] += v
                count[i, j] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return Cell(values, shapes, seeds, n_views, n_empty)


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of a (seeds, shapes) matrix, resampling shapes and
    seeds independently with replacement. NaN cells are left out of each mean."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[None]
    n_seeds, n_shapes = values.shape
    if n_shapes == 0 or not np.isfinite(values).any():
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    shape_idx = rng.integers(0, n_shapes, size=(n_boot, n_shapes))
    seed_idx = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    means = np.empty(n_boot)
    # All resamples at once, in blocks of ~1M cells: one loop iteration per resample made this
    # 60 % of the report stage (185 intervals, 11 s). Each resample is gathered shape-major,
    # the memory order of the one-at-a-time ``filled[seeds][:, shapes]`` that this replaced,
    # so every sum adds the same numbers in the same order: bit-identical means
    # (tests/test_stats.py).
    step = max(1, 2**20 // max(1, n_seeds * n_shapes))
    for b0 in range(0, n_boot, step):
        c, s = shape_idx[b0:b0 + step, :, None], seed_idx[b0:b0 + step, None, :]
        total = filled.T[c, s].reshape(len(c), -1).sum(axis=1)
        count = finite.T[c, s].reshape(len(c), -1).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[b0:b0 + step] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def paired_difference(cell: Cell, ref: Cell, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean of (cell - ref) over the shapes both have, seeds paired by position; returns
    (mean, lo, hi, n_shapes)."""
    common = sorted(set(cell.shapes) & set(ref.shapes))
    if not common:
        return float("nan"), float("nan"), float("nan"), 0
    a = cell.values[:, [cell.shapes.index(s) for s in common]]
    b = ref.values[:, [ref.shapes.index(s) for s in common]]
    k = min(len(a), len(b))
    diff = a[:k] - b[:k]
    mean = float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan")
    lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return mean, lo, hi, len(common)
