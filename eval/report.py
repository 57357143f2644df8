"""One report over several evaluation directories (`cdc-aug eval` outputs).

``build_report(eval_dirs, out_dir)`` writes into ``out_dir``:

- ``report.md`` with its figures in ``figures/`` (PNG), and ``report.html``: the same
  content in one self-contained page (images inlined as base64), viewable offline;
- ``results.csv``: every number of the tables in long form (model, test domain,
  category, metric, value, views);
- ``config.yaml``: the evaluation directories it was built from.

Contents: tables of models x test domains (overall, then per category) for
chamfer_l1, fscore@0.01, normal_consistency, iou_3d and iou_2d; one plot per metric
against the T_in of the model's training data (clean and copy-paste models as horizontal
reference lines); a grid of the augmentations (rows: test shapes, columns: clean / each
T_in / copy-paste, read from the test domains' data directories); inputs next to renders
of their reconstructions for each evaluation.

A model's identity comes from its summary.json (``model``, ``train_domain``,
``train_t_in``, written by `cdc-aug eval` from the training run's config); a directory
named ``<model>__<domain>`` fills in what the summary lacks.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdc_aug.errors import UserError
from cdc_aug.safeio import atomic_write_text

from .evaluate import SAMPLES, SUMMARY
from .identity import train_domain_from_name

log = logging.getLogger(__name__)

REPORT_METRICS = [  # (key, label, higher is better); the report's tables and its CI section
    ("chamfer_l1", "Chamfer-L1", False),
    ("iou_3d", "3D IoU", True),
    ("iou_2d", "2D IoU", True),
    ("fscore@0.01", "F-score@0.01", True),
    ("normal_consistency", "Normal consistency", True),
]
MAX_GRID_SHAPES = 4
SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


@dataclass
class Run:
    dir: Path
    summary: dict
    model: str
    domain: str
    train_domain: str
    train_t_in: float | None
    samples: list[str] = field(default_factory=list)

    def value(self, metric: str, category: str | None = None) -> float:
        block = self.summary["overall"] if category is None else self.summary["per_category"].get(category)
        if not block:
            return float("nan")
        v = block.get(metric)
        return float("nan") if v is None else float(v)


def _domain_order(domain: str) -> tuple:
    """clean first, then T_in ascending, then copy-paste, then anything else by name."""
    if domain == "clean":
        return (0, 0.0, domain)
    m = re.fullmatch(r"t_in=([0-9.]+)", domain)
    if m:
        return (1, float(m.group(1)), domain)
    if domain == "copy-paste":
        return (2, 0.0, domain)
    return (3, 0.0, domain)


def load_run(eval_dir: str | os.PathLike) -> Run:
    d = Path(eval_dir)
    path = d / SUMMARY
    if not path.exists():
        raise UserError(f"{d}: no {SUMMARY}; not a finished `cdc-aug eval` directory")
    try:
        s = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not s.get("train_data") and s.get("ckpt") and Path(s["ckpt"]).exists():
        # An evaluation written before its training config could be found: the checkpoint's
        # run directory still says what the model trained on (and with which seed).
        from .identity import checkpoint_identity

        ident = checkpoint_identity(s["ckpt"])
        if ident.get("train_data"):
            for k in ("train_data", "train_seed", "train_domain", "train_t_in", "train_identity_from"):
                if k in ident:
                    s[k] = ident[k]
    name_model, _, name_domain = d.name.partition("__")
    model = s.get("model") or name_model
    domain = s.get("domain") or name_domain or "unknown"
    if s.get("train_domain"):
        train_domain, t_in = s["train_domain"], s.get("train_t_in")
    else:
        g = train_domain_from_name(model)
        train_domain, t_in = g["domain"], g["t_in"]
    # Sample keys name files under the evaluation's samples/: only plain keys, never a path.
    samples = [k for k in s.get("samples", []) if isinstance(k, str) and SAFE_KEY.fullmatch(k)]
    return Run(d, s, model, domain, train_domain, None if t_in is None else float(t_in), samples)


def _fmt(v: float, metric: str) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.4f}" if metric.startswith("chamfer") else f"{v:.3f}"


def _table(runs: list[Run], models: list[str], domains: list[str], metric: str, higher: bool,
           category: str | None = None) -> tuple[list[str], list[list[str]], set[tuple[int, int]]]:
    """Header, rows of formatted cells, and the (row, col) cells that are the best in their column."""
    by = {(r.model, r.domain): r for r in runs}
    header = ["model", *domains]
    values = np.full((len(models), len(domains)), np.nan)
    for i, m in enumerate(models):
        for j, dom in enumerate(domains):
            if (m, dom) in by:
                values[i, j] = by[(m, dom)].value(metric, category)
    best = set()
    for j in range(len(domains)):
        col = values[:, j]
        if np.isfinite(col).sum() > 1:
            target = np.nanmax(col) if higher else np.nanmin(col)
            best.update((i, j) for i in range(len(models)) if col[i] == target)
    rows = [[m, *(_fmt(values[i, j], metric) for j in range(len(domains)))] for i, m in enumerate(models)]
    return header, rows, best


def _md_cell(text) -> str:
    """A table cell that cannot break the table or inject markup: pipes, newlines, HTML and
    link syntax are escaped (names come from files and run names)."""
    text = html.escape(str(text), quote=False).replace("\n", " ").replace("\r", " ")
    return text.replace("|", "\\|").replace("`", "\\`").replace("](", "]\\(")


def _csv_cell(value):
    """Spreadsheet-safe: a text cell starting with = + - @ is not taken as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value


def _md_table(header, rows, best) -> str:
    header = [_md_cell(h) for h in header]
    rows = [[_md_cell(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for i, row in enumerate(rows):
        cells = [row[0]] + [f"**{c}**" if (i, j) in best else c for j, c in enumerate(row[1:])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _html_table(header, rows, best) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = []
    for i, row in enumerate(rows):
        cells = [f"<td>{html.escape(row[0])}</td>"]
        cells += [f"<td class=\"num{' best' if (i, j) in best else ''}\">{html.escape(c)}</td>"
                  for j, c in enumerate(row[1:])]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{h}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _plot_vs_t_in(runs: list[Run], domains: list[str], metric: str, label: str, higher: bool, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    t_models = sorted({(r.train_t_in, r.model) for r in runs if r.train_t_in is not None})
    xs = sorted({t for t, _ in t_models})
    for k, dom in enumerate(domains):
        c = colors[k % len(colors)]
        pts = sorted((r.train_t_in, r.value(metric)) for r in runs if r.domain == dom and r.train_t_in is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=c, label=f"test: {dom}")
        for r in runs:
            if r.domain != dom or r.train_t_in is not None:
                continue
            style = {"clean": "--", "copy-paste": ":"}.get(r.train_domain, "-.")
            ax.axhline(r.value(metric), color=c, linestyle=style, linewidth=1,
                       label=f"test: {dom}, model {r.model} ({r.train_domain})")
    ax.set_xlabel("T_in of the model's training data")
    if xs:
        ax.set_xticks(xs)
        ax.set_xlim(min(xs) - 0.1, max(xs) + 0.1)
    else:
        ax.set_xlim(0, 1)
    ax.set_ylabel(label + (" (higher is better)" if higher else " (lower is better)"))
    ax.set_title(f"{label} vs T_in")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: up to 3 lines per domain
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _find_images(data_dir: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """The input image (image.png, else rgba.png over white) of ``keys`` in a stage dir;
    missing keys are left out. Sidecar key lists say which shards to open."""
    from cdc_aug.samples import decode_sample
    from cdc_aug.shards import ShardDamaged, shard_paths, verified_samples
    from train_svr.data import input_image

    want = set(keys)
    found: dict[str, np.ndarray] = {}
    try:
        paths = shard_paths(data_dir)
    except (UserError, OSError, ValueError):
        return found
    for path in paths:
        if not want - set(found):
            break
        try:
            listed = set(json.loads(path.with_name(path.name + ".json").read_text())["keys"])
            if not listed & want:
                continue
        except (OSError, ValueError, KeyError):
            pass
        if not path.exists():
            continue
        try:  # checked against the stage's index.json like every other consumer's read
            for raw in verified_samples(path):
                if raw["__key__"] in want:
                    found[raw["__key__"]] = input_image(decode_sample(raw, ["image.png", "rgba.png"]))
                    if not want - set(found):
                        break
        except ShardDamaged as e:  # a figure, not a result: leave the damaged shard's images out
            log.warning("augmentation grid: %s", e)
    return found


def _augmentation_grid(runs: list[Run], domains: list[str], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data_dirs: dict[str, Path] = {}
    for r in runs:
        if r.domain not in data_dirs and r.summary.get("data_dir"):
            data_dirs[r.domain] = Path(r.summary["data_dir"])
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.samples if k not in keys]
    keys = keys[:MAX_GRID_SHAPES]
    if not keys or not data_dirs:
        return False
    images = {dom: _find_images(data_dirs[dom], keys) for dom in domains if dom in data_dirs}
    cols = [dom for dom in domains if images.get(dom)]
    keys = [k for k in keys if any(k in images[d] for d in cols)]
    if not keys:
        return False
    fig, axes = plt.subplots(len(keys), len(cols), figsize=(2 * len(cols), 2 * len(keys)), dpi=100, squeeze=False)
    for i, k in enumerate(keys):
        for j, dom in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if k in images[dom]:
                ax.imshow(images[dom][k])
            if i == 0:
                ax.set_title(dom, fontsize=9)
            if j == 0:
                ax.set_ylabel(k, fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _reconstruction_strip(run: Run, path: Path) -> bool:
    """Inputs (top) over renders of their reconstructions (bottom), one column per saved view."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    pairs = []
    for k in run.samples:
        a, b = run.dir / SAMPLES / f"{k}_input.png", run.dir / SAMPLES / f"{k}_recon.png"
        if a.exists() and b.exists():
            pairs.append((Image.open(a).convert("RGB"), Image.open(b).convert("RGB")))
    if not pairs:
        return False
    size = pairs[0][0].size  # make_image_grid tiles at the first image's size
    tops = [a.resize(size) for a, _ in pairs]
    bottoms = [b.resize(size) for _, b in pairs]
    make_image_grid(tops + bottoms, rows=2, cols=len(pairs)).save(path)
    return True


def _b64(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px}"
       "th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}td.best{font-weight:bold;"
       "background:#e8f5e9}img{max-width:100%;border:1px solid #eee}h2{border-bottom:1px solid #ddd}"
       "figure{margin:0 0 1.5em}figcaption{font-size:0.9em;color:#555}")


class _Doc:
    """Markdown and HTML written side by side, so the two never disagree."""

    def __init__(self, title: str):
        self.md: list[str] = [f"# {title}", ""]
        self.html: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    def heading(self, text: str, level: int = 2) -> None:
        self.md += ["#" * level + " " + html.escape(text, quote=False), ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md += [html.escape(text, quote=False), ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header, rows, best) -> None:
        self.md += [_md_table(header, rows, best), ""]
        self.html.append(_html_table(header, rows, best))

    def image(self, path: Path, rel: str, caption: str) -> None:
        safe = html.escape(caption, quote=False).replace("[", "\\[").replace("]", "\\]").replace("*", "\\*")
        self.md += [f"![{safe}]({rel})", "", f"*{safe}*", ""]
        self.html.append(f"<figure><img src=\"{_b64(path)}\" alt=\"{html.escape(caption)}\">"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def build_report(eval_dirs: list, out_dir: str | os.PathLike) -> Path:
    """Write report.md, report.html, results.csv, figures/ and config.yaml into ``out_dir``;
    returns the path of report.html."""
    import matplotlib

    from cdc_aug.runinfo import write_config

    if not eval_dirs:
        raise UserError("give at least one evaluation directory")
    # Model and domain names are data, not math: a "$" in a name must not start mathtext.
    matplotlib.rcParams["text.parse_math"] = False
    runs = [load_run(d) for d in eval_dirs]
    seen: dict[tuple[str, str], Path] = {}
    for r in runs:
        if (r.model, r.domain) in seen:
            raise UserError(f"{r.dir} and {seen[(r.model, r.domain)]} both evaluate {r.model} on {r.domain}")
        seen[(r.model, r.domain)] = r.dir
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    write_config(out, {"eval_dirs": [str(Path(d).resolve()) for d in eval_dirs]})

    def model_key(m: str) -> tuple:
        r = next(x for x in runs if x.model == m)
        return (*_domain_order(r.train_domain if r.train_t_in is None else f"t_in={r.train_t_in:g}"), m)

    models = sorted({r.model for r in runs}, key=model_key)
    domains = sorted({r.domain for r in runs}, key=_domain_order)
    categories = sorted({c for r in runs for c in r.summary.get("per_category", {})})

    doc = _Doc("cdc-aug evaluation report")
    doc.para(f"{len(runs)} evaluations: {len(models)} models x {len(domains)} test domains; "
             f"categories: {', '.join(categories) or '-'}. Occupancy Networks protocol in the unit cube "
             "(Chamfer-L1 lower is better, the rest higher; an empty reconstruction scores Chamfer-L1 sqrt(3), "
             "normal consistency -1, F-score and IoU 0). Best value per column in bold.")
    model_rows = [[r.model, r.train_domain, "-" if r.train_t_in is None else f"{r.train_t_in:g}",
                   r.summary.get("ckpt", "-")] for r in sorted({r.model: r for r in runs}.values(),
                                                                   key=lambda r: model_key(r.model))]
    doc.heading("Models")
    doc.table(["model", "training data", "T_in", "checkpoint"], model_rows, set())
    views = [[r.model, r.domain, str(r.summary["overall"].get("n_views", "-")),
              str(r.summary["overall"].get("n_shapes", "-")), str(r.summary["overall"].get("n_empty", "-")),
              str(r.summary.get("split", "-")), str(r.summary.get("data_dir", "-"))] for r in runs]
    doc.heading("Evaluations")
    doc.table(["model", "test domain", "views", "shapes", "empty", "split", "data"], views, set())

    from .report_ci import ci_section

    ci_section(doc, runs, fig_dir, out, model_key)

    doc.heading("Per evaluation (one model, one seed)")
    for metric, label, higher in REPORT_METRICS:
        doc.heading(f"{label} ({'higher' if higher else 'lower'} is better)", 3)
        doc.table(*_table(runs, models, domains, metric, higher))
    if categories:
        doc.heading("Per category")
        for cat in categories:
            doc.heading(cat, 3)
            for metric, label, higher in REPORT_METRICS:
                header, rows, best = _table(runs, models, domains, metric, higher, cat)
                doc.para(f"{label}:")
                doc.table(header, rows, best)

    doc.heading("Metrics against T_in")
    if not any(r.train_t_in is not None for r in runs):
        doc.para("No model in these evaluations was trained on masked-ILVR data with a known T_in: "
                 "the plots show the other models as horizontal lines only.")
    for metric, label, higher in REPORT_METRICS:
        name = f"vs_t_in_{re.sub(r'[^A-Za-z0-9]+', '_', metric)}.png"
        _plot_vs_t_in(runs, domains, metric, label, higher, fig_dir / name)
        doc.image(fig_dir / name, f"figures/{name}", f"{label} against the T_in of the training data")

    doc.heading("Augmentations")
    if _augmentation_grid(runs, domains, fig_dir / "augmentations.png"):
        doc.image(fig_dir / "augmentations.png", "figures/augmentations.png",
                  "The same test views in each test domain (rows: shapes; columns: domains)")
    else:
        doc.para("No saved samples or data directories found: no augmentation grid.")

    doc.heading("Reconstructions")
    for r in sorted(runs, key=lambda r: (model_key(r.model), _domain_order(r.domain))):
        name = f"recon_{re.sub(r'[^A-Za-z0-9-]+', '_', r.model)}__{re.sub(r'[^A-Za-z0-9-]+', '_', r.domain)}.png"
        if _reconstruction_strip(r, fig_dir / name):
            doc.image(fig_dir / name, f"figures/{name}",
                      f"{r.model} on {r.domain}: inputs (top), reconstructions seen by the same camera (bottom)")

    rows_csv = io.StringIO()
    w = csv.writer(rows_csv)
    w.writerow(["model", "train_domain", "train_t_in", "test_domain", "category", "metric", "value", "n_views"])
    for r in runs:
        for cat in [None, *categories]:
            block = r.summary["overall"] if cat is None else r.summary.get("per_category", {}).get(cat)
            if not block:
                continue
            for metric, _, _ in REPORT_METRICS:
                w.writerow([_csv_cell(x) for x in (r.model, r.train_domain,
                            "" if r.train_t_in is None else r.train_t_in, r.domain, cat or "all", metric,
                            r.value(metric, cat), block.get("n_views"))])
    # Written whole and renamed into place (fsynced), never half-written over an older report.
    atomic_write_text(out / "results.csv", rows_csv.getvalue())
    atomic_write_text(out / "report.md", "\n".join(doc.md) + "\n")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>cdc-aug evaluation report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(doc.html) + "</body></html>\n")
    atomic_write_text(out / "report.html", page)
    log.info("report of %d evaluations in %s", len(runs), out)
    return out / "report.html"


