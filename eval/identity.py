"""Which model a checkpoint is and what it was trained on, for summary.json and the report.

A `cdc-aug train` run keeps ``<runs_dir>/<name>/checkpoints/*.ckpt`` next to LightningCLI's
``config.yaml``, whose ``data.shards`` names the training directories; each of those
says its domain in its index.json (eval.evaluate.domain_of). When that config is gone the
report falls back on the run name (``svr-t050`` -> T_in 0.5)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cdc_aug.errors import UserError
from cdc_aug.shards import read_index

from .evaluate import domain_of

NAME_T_IN = re.compile(r"t(?:_in)?[=_-]?(\d)(\d+)(?:-s\d+)?$")  # svr-t050, svr-t050-s2


def _shard_dirs(shards) -> list[str]:
    from train_svr.data import parse_shards  # "dir:weight" entries, read as training reads them

    if not shards:
        return []
    if isinstance(shards, str):
        shards = [s.strip() for s in shards.strip("[]").split(",") if s.strip()]
    try:
        return parse_shards(shards, None)[0]
    except UserError:
        return [str(s) for s in shards]


def train_domain_from_name(name: str) -> dict:
    """Guess a model's training domain from its run name: ``svr-clean``, ``svr-t050``,
    ``svr-copy-paste``."""
    low = name.lower()
    if "copy-paste" in low or "copy_paste" in low or "copypaste" in low:
        return {"domain": "copy-paste", "t_in": None}
    m = NAME_T_IN.search(low)
    if m:
        t = float(f"{m.group(1)}.{m.group(2)}")
        return {"domain": f"t_in={t:g}", "t_in": t}
    if "clean" in low:
        return {"domain": "clean", "t_in": None}
    return {"domain": name, "t_in": None}


def checkpoint_identity(ckpt: str | Path) -> dict:
    """``{"ckpt", "model", "train_data": [{"dir", "domain", "t_in", ...}], "train_domain",
    "train_t_in", "train_identity_from"}`` for a checkpoint path."""
    ckpt = Path(ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    ident: dict = {"ckpt": str(ckpt.resolve()), "model": run_dir.name}
    train = []
    # LightningCLI saves the run's config next to its logger's files (tensorboard/).
    cfg_path = next((p for p in (run_dir / "config.yaml", run_dir / "tensorboard" / "config.yaml") if p.exists()),
                    run_dir / "config.yaml")
    if cfg_path.exists():
        try:
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError:
            cfg = {}
        if isinstance(cfg.get("seed_everything"), int) and not isinstance(cfg.get("seed_everything"), bool):
            ident["train_seed"] = cfg["seed_everything"]  # eval.stats groups seeds of one training set
        for d in _shard_dirs((cfg.get("data") or {}).get("shards")):
            entry: dict = {"dir": d}
            try:
                entry.update(domain_of(read_index(d)))
            except Exception:  # noqa: BLE001 - a moved training dir must not stop the evaluation
                entry["domain"] = None
            train.append(entry)
    ident["train_data"] = train
    known = [t for t in train if t.get("domain")]
    # Augmented data mixed with clean renders is still "the T_in model": name it by the augmentation.
    aug = [t for t in known if t["domain"] != "clean"]
    if known:
        main = aug[0] if aug else known[0]
        ident.update(train_domain=main["domain"], train_t_in=main.get("t_in"), train_identity_from="config")
    else:
        g = train_domain_from_name(run_dir.name)
        ident.update(train_domain=g["domain"], train_t_in=g["t_in"], train_identity_from="run name")
    return ident
