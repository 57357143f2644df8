"""The report's answer section: model families x test domains with 95 % bootstrap
intervals (eval.stats), paired differences to svr-clean, empty counts, what each test
domain is (its generate settings; out-of-domain or not), and one error-bar panel per
domain. ``results_ci.csv`` and ``paired_ci.csv`` hold every number of it, for
scripts/readme_results.py."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np
import yaml

from cdc_aug.safeio import atomic_write_text

from .evaluate import read_rows
from .report import REPORT_METRICS
from .stats import Cell, bootstrap_ci, family_and_seed, make_cell, paired_difference

CI_METRICS = REPORT_METRICS  # one list: the CI tables show what the plain tables show
DIFF_METRICS = ("chamfer_l1", "iou_3d", "iou_2d")

EXPLAIN = (
    "Terms. T_in: the fraction of the diffusion steps during which the object's low frequencies "
    "guide the sample (1 keeps the render, 0 lets the model redraw it); the background is free "
    "(T_out = 0). N: the low-pass factor of that guidance (the reference is downsampled by N and "
    "upsampled again; N = 1 guides every frequency). Guidance space: x0 replaces the low "
    "frequencies of the model's predicted clean image at each step; xt (classic ILVR) replaces "
    "those of the noisy sample with the reference noised to the same level. "
    "Metrics. Shapes live in the unit cube [-0.5, 0.5]^3 (bounding-box centre, longest edge 1). "
    "Chamfer-L1 = 1/2 (accuracy + completeness), the mean Euclidean nearest-neighbour distances between points sampled on the predicted and the ground-truth "
    "surface, in unit-cube units (lower is better). F-score@0.01: harmonic mean of precision and "
    "recall at distance 0.01. 3D IoU on the stored occupancy points; 2D IoU of the "
    "reconstruction's silhouette (same camera) against the view's mask. An empty reconstruction "
    "scores Chamfer-L1 sqrt(3), IoU and F-score 0, normal consistency -1, and is counted in 'empty'."
)


def _fmt(v: float, metric: str) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.4f}" if metric.startswith("chamfer") else f"{v:.3f}"


def _ci(mean: float, lo: float, hi: float, metric: str) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{_fmt(mean, metric)} [{_fmt(lo, metric)}, {_fmt(hi, metric)}]"


def _domain_settings(summary: dict) -> str:
    """One line of what produced a test domain, from its data directory's config.yaml."""
    data = Path(summary.get("data_dir", ""))
    if summary.get("real"):
        return "real photographs" + (f" ({summary.get('camera')} camera)" if summary.get("camera") else "")
    if summary.get("stage") == "render":
        return "clean renders (object on white)"
    try:
        cfg = (yaml.safe_load((data / "config.yaml").read_text()) or {}).get("config", {})
    except (OSError, yaml.YAMLError):
        cfg = {}
    if not cfg:
        return str(summary.get("mode") or "-")
    if cfg.get("mode") == "copy-paste":
        return f"copy-paste on {Path(str(cfg.get('backgrounds'))).name}"
    ident = cfg.get("model_identity") or {}
    model = ident.get("name") or ident.get("hub_id") or ident.get("path") or cfg.get("model") or "bundled default"
    model = Path(str(model)).name if "/" in str(model) and not ident.get("hub_id") else model
    parts = [f"masked ILVR, model {model}", f"T_in {cfg.get('t_in')}", f"T_out {cfg.get('t_out')}",
             f"N {cfg.get('n_in')}", f"space {cfg.get('space')}", f"{cfg.get('steps')} DDIM steps"]
    if cfg.get("model_size") not in (None, "native"):
        parts.append(f"model size {cfg.get('model_size')}")
    return ", ".join(parts)


def _plot(families: list[str], domains: list[str], stats: dict, metric: str, label: str, higher: bool,
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(domains)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 2.6 * rows + 0.6), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, dom in enumerate(domains):
        ax = axes[k // cols][k % cols]
        for i, fam in enumerate(families):
            s = stats.get((fam, dom))
            if s is None or not math.isfinite(s["mean"]):
                continue
            lo, hi = s["lo"], s["hi"]
            ax.errorbar([i], [s["mean"]], yerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="o", capsize=3,
                        color=colors[i % len(colors)], label=fam if k == 0 else None)
        ax.set_title(dom + (" (OOD)" if stats.get(("__ood__", dom)) else ""), fontsize=9)
        ax.set_xticks(range(len(families)))
        ax.set_xticklabels([f.removeprefix("svr-") for f in families], rotation=45, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"{label} ({'higher' if higher else 'lower'} is better), mean and 95% bootstrap CI per test domain",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def ci_section(doc, runs: list, fig_dir: Path, out: Path, family_key) -> None:
    """Append the answer section to ``doc`` (eval.report._Doc) for ``runs`` (eval.report.Run)."""
    # 1. Group the evaluations: family -> domain -> seed -> rows.
    groups: dict[tuple[str, str], dict[int, list[dict]]] = {}
    fam_of: dict[str, str] = {}
    for r in runs:
        fam, seed = family_and_seed(r.model, r.summary.get("train_seed"))
        fam_of[r.model] = fam
        try:
            rows = read_rows(r.dir)
        except OSError:
            continue
        by_seed = groups.setdefault((fam, r.domain), {})
        by_seed[seed if seed is not None else len(by_seed)] = rows
    families = sorted({fam_of[r.model] for r in runs}, key=lambda f: family_key(next(x.model for x in runs
                                                                                       if fam_of[x.model] == f)))
    domains = []
    for r in runs:
        if r.domain not in domains:
            domains.append(r.domain)
    from .report import _domain_order

    domains.sort(key=_domain_order)
    ref = next((f for f in families if any(r.train_domain == "clean" and fam_of[r.model] == f for r in runs)), None)

    # 2. Which test domains no model trained on (out-of-domain for every model).
    trained_on = set()
    for r in runs:
        for t in r.summary.get("train_data", []) or []:
            if t.get("dir"):
                trained_on.add(str(Path(t["dir"]).resolve()))
    first = {}
    for r in runs:
        first.setdefault(r.domain, r)
    ood = {d: str(Path(first[d].summary.get("data_dir", "")).resolve()) not in trained_on and bool(trained_on)
           for d in domains}

    doc.heading("Answer: means with 95% confidence intervals")
    n_seeds = max((len(v) for v in groups.values()), default=0)
    n_shapes = max((len(make_cell(v, "chamfer_l1").shapes) for v in groups.values()), default=0)
    doc.para(f"{len(families)} training sets x {len(domains)} test domains; up to {n_seeds} training seeds per set and "
             f"{n_shapes} test shapes per domain. Each cell: mean over test shapes (views averaged within a shape) "
             "and seeds, with a 95% percentile-bootstrap interval resampling shapes and seeds (2,000 resamples).")
    doc.para(EXPLAIN)

    rows = []
    for d in domains:
        s = first[d].summary
        kind = "real photographs" if s.get("real") else ("out-of-domain for every model" if ood[d] else "training domain")
        rows.append([d, kind, _domain_settings(s), str(s.get("overall", {}).get("n_shapes", "-")),
                     str(s.get("overall", {}).get("n_views", "-"))])
    doc.heading("Test domains", 3)
    doc.table(["domain", "kind", "how it was made", "shapes", "views"], rows, set())

    stats: dict = {("__ood__", d): ood[d] for d in domains}
    cells: dict[tuple[str, str, str], Cell] = {}
    ci_csv = io.StringIO()
    w = csv.writer(ci_csv)
    w.writerow(["family", "test_domain", "ood", "metric", "mean", "ci_lo", "ci_hi", "n_shapes", "n_views",
                "n_seeds", "n_empty"])
    for metric, label, higher in CI_METRICS:
        table_rows, values = [], np.full((len(families), len(domains)), np.nan)
        for i, fam in enumerate(families):
            row = [fam]
            for j, d in enumerate(domains):
                if (fam, d) not in groups:
                    row.append("-")
                    continue
                c = make_cell(groups[(fam, d)], metric)
                cells[(fam, d, metric)] = c
                lo, hi = bootstrap_ci(c.values)
                values[i, j] = c.mean
                stats_key = (fam, d) if metric == "chamfer_l1" else (fam, d, metric)
                stats[stats_key] = {"mean": c.mean, "lo": lo, "hi": hi}
                row.append(_ci(c.mean, lo, hi, metric))
                w.writerow([fam, d, int(ood[d]), metric, c.mean, lo, hi, len(c.shapes), c.n_views,
                            len(c.seeds), c.n_empty])
            table_rows.append(row)
        best = set()
        for j in range(len(domains)):
            col = values[:, j]
            if np.isfinite(col).sum() > 1:
                target = np.nanmax(col) if higher else np.nanmin(col)
                best.update((i, j) for i in range(len(families)) if col[i] == target)
        doc.heading(f"{label} ({'higher' if higher else 'lower'} is better)", 3)
        doc.table(["model", *[d + (" (OOD)" if ood[d] else "") for d in domains]], table_rows, best)

    atomic_write_text(out / "results_ci.csv", ci_csv.getvalue())

    # 3. Paired differences to the clean model.
    if ref is not None:
        doc.heading(f"Paired differences to {ref}", 3)
        doc.para(f"Model minus {ref} on the same test shapes and seed positions, with a 95% bootstrap interval. "
                 "'better' / 'worse': the interval excludes 0 in that direction; 'n.s.': it includes 0.")
        paired_csv = io.StringIO()
        w = csv.writer(paired_csv)
        w.writerow(["family", "reference", "test_domain", "ood", "metric", "diff", "ci_lo", "ci_hi", "n_shapes",
                    "verdict"])
        for metric in DIFF_METRICS:
            higher = dict((m, h) for m, _, h in CI_METRICS)[metric]
            table_rows = []
            for fam in families:
                if fam == ref:
                    continue
                row = [fam]
                for d in domains:
                    a, b = cells.get((fam, d, metric)), cells.get((ref, d, metric))
                    if a is None or b is None:
                        row.append("-")
                        continue
                    diff, lo, hi, n = paired_difference(a, b)
                    verdict = "n.s."
                    if math.isfinite(lo) and (lo > 0 or hi < 0):
                        verdict = "better" if (lo > 0) == higher else "worse"
                    row.append(f"{_ci(diff, lo, hi, metric)} {verdict}")
                    w.writerow([fam, ref, d, int(ood[d]), metric, diff, lo, hi, n, verdict])
                table_rows.append(row)
            label = dict((m, lb) for m, lb, _ in CI_METRICS)[metric]
            doc.para(f"{label} difference to {ref}:")
            doc.table(["model", *domains], table_rows, set())

        atomic_write_text(out / "paired_ci.csv", paired_csv.getvalue())

    # 4. Empty reconstructions, counted rather than hidden in a mean.
    doc.heading("Empty reconstructions (views with no surface / views evaluated)", 3)
    table_rows = []
    for fam in families:
        row = [fam]
        for d in domains:
            c = cells.get((fam, d, "chamfer_l1"))
            row.append("-" if c is None else f"{c.n_empty}/{c.n_views}" + (" !" if c.n_empty else ""))
        table_rows.append(row)
    doc.table(["model", *domains], table_rows, set())

    # 5. Error-bar panels, one per test domain.
    for metric, label, higher in CI_METRICS[:3]:
        per = {(fam, d): stats[(fam, d)] if metric == "chamfer_l1" else stats.get((fam, d, metric))
               for fam in families for d in domains if (fam, d) in stats or (fam, d, metric) in stats}
        per.update({k: v for k, v in stats.items() if k[0] == "__ood__"})
        name = f"ci_{re.sub(r'[^A-Za-z0-9]+', '_', metric)}.png"
        _plot(families, domains, per, metric, label, higher, fig_dir / name)
        doc.image(fig_dir / name, f"figures/{name}", f"{label}: mean and 95% CI of each training set, one panel "
                                                       "per test domain (OOD: no model trained on it)")
