"""eval.stats: bootstrap intervals over shapes (views nested) and seeds; paired differences."""

import numpy as np

from eval.stats import bootstrap_ci, family_and_seed, make_cell, paired_difference


def _rows(values: dict[str, list[float]], empty_first=False):
    rows = []
    for shape, views in values.items():
        for v, x in enumerate(views):
            rows.append({"synset": "03001627", "model_id": shape, "view": v, "chamfer_l1": x,
                         "empty": int(empty_first and v == 0)})
    return rows


def test_family_and_seed():
    assert family_and_seed("svr-t050-s2") == ("svr-t050", 2)
    assert family_and_seed("svr-clean") == ("svr-clean", None)
    assert family_and_seed("svr-clean-s1", 7) == ("svr-clean", 7)


def test_views_are_averaged_within_a_shape_before_the_mean():
    # shape a has 3 views, shape b one: the mean is over shapes, not views
    cell = make_cell({0: _rows({"a": [0.1, 0.1, 0.1], "b": [0.4]}, empty_first=True)}, "chamfer_l1")
    assert cell.shapes == ["03001627/a", "03001627/b"]
    assert np.isclose(cell.mean, 0.25) and cell.n_views == 4 and cell.n_empty == 2


def test_interval_covers_the_population_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(200):
        x = rng.normal(1.0, 0.3, size=(3, 30))
        lo, hi = bootstrap_ci(x, n_boot=400, seed=trial)
        hits += lo <= 1.0 <= hi
    assert 0.85 <= hits / 200 <= 0.995  # percentile bootstrap is slightly liberal at n = 30


def test_interval_narrows_with_more_shapes_and_is_degenerate_for_a_constant():
    rng = np.random.default_rng(1)
    lo1, hi1 = bootstrap_ci(rng.normal(0, 1, (1, 10)))
    lo2, hi2 = bootstrap_ci(rng.normal(0, 1, (1, 400)))
    assert hi2 - lo2 < (hi1 - lo1) / 3
    assert np.allclose(bootstrap_ci(np.full((3, 5), 0.2)), (0.2, 0.2))


def test_paired_difference_cancels_shape_difficulty():
    rng = np.random.default_rng(2)
    difficulty = rng.uniform(0.05, 0.5, size=40)  # varies far more than the effect
    shapes = {f"s{i}": [d] for i, d in enumerate(difficulty)}
    ref = make_cell({s: _rows(shapes) for s in range(3)}, "chamfer_l1")
    better = make_cell({s: _rows({k: [v[0] - 0.01] for k, v in shapes.items()}) for s in range(3)}, "chamfer_l1")
    diff, lo, hi, n = paired_difference(better, ref)
    assert n == 40 and np.isclose(diff, -0.01) and hi < 0
    # unpaired intervals of the two means overlap entirely: only pairing sees the effect
    assert bootstrap_ci(better.values)[1] > bootstrap_ci(ref.values)[0]


def test_identity_reads_the_training_config_where_lightningcli_saves_it(tmp_path):
    import yaml

    from eval.identity import checkpoint_identity

    run = tmp_path / "runs" / "svr-t050-s2"
    (run / "checkpoints").mkdir(parents=True)
    (run / "tensorboard").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "tensorboard" / "config.yaml").write_text(yaml.safe_dump(
        {"seed_everything": 2, "data": {"shards": [str(tmp_path / "missing-aug")]}}))
    ident = checkpoint_identity(run / "checkpoints" / "last.ckpt")
    assert ident["train_seed"] == 2 and ident["train_identity_from"] == "run name"
    assert ident["train_data"] == [{"dir": str(tmp_path / "missing-aug"), "domain": None}]


def _bootstrap_one_at_a_time(values, n_boot=2000, seed=0, level=0.95):
    """The straightforward loop bootstrap_ci replaces: one resample at a time."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    rng = np.random.default_rng(seed)
    shape_idx = rng.integers(0, values.shape[1], size=(n_boot, values.shape[1]))
    seed_idx = rng.integers(0, values.shape[0], size=(n_boot, values.shape[0]))
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    means = np.empty(n_boot)
    for b in range(n_boot):
        w = finite[seed_idx[b]][:, shape_idx[b]]
        means[b] = filled[seed_idx[b]][:, shape_idx[b]].sum() / w.sum() if w.any() else np.nan
    lo, hi = np.nanquantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def test_vectorised_bootstrap_is_bit_identical_to_the_loop():
    rng = np.random.default_rng(3)
    for seeds, shapes in ((1, 7), (3, 40), (5, 300), (2, 1)):
        v = rng.normal(0.1, 0.05, size=(seeds, shapes)) * 10.0 ** rng.integers(-3, 3, size=(seeds, shapes))
        v[rng.random(v.shape) < 0.2] = np.nan  # empty cells are left out of each mean
        assert bootstrap_ci(v, seed=seeds) == _bootstrap_one_at_a_time(v, seed=seeds)
    assert bootstrap_ci(np.full((1, 3), np.nan)) != bootstrap_ci(np.full((1, 3), np.nan))  # NaN, NaN
