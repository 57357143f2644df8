"""``cdc-aug experiment``: the whole question in one command.

render -> generate (each T_in, and copy-paste) -> one SVR model per training set plus a
clean-only one -> eval of every model on every test domain (plus test-only real domains,
``eval: {extra_domains: ...}``) -> report. Each stage runs as
its own ``cdc-aug`` command (what a user would type), logs to a file, and is skipped when
its output is already complete, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .runinfo import write_config


@dataclass
class Stage:
    name: str
    argv: list[str]
    output: Path
    done_file: Path | None  # what the stage leaves behind (None: the stage always runs)
    resume_argv: list[str] | None = None  # appended when a previous attempt left done_file behind

    def marker(self, runs: Path) -> Path:
        return runs / "logs" / (self.name.replace(" ", "_") + ".done")

    def is_done(self, runs: Path) -> bool:
        # The marker is written only after the command succeeded: a killed stage whose
        # output file already exists (a mid-training checkpoint) is not taken as done.
        return self.done_file is not None and self.done_file.exists() and self.marker(runs).exists()


def tag(t: float) -> str:
    return f"t{round(t * 100):03d}"


def load_experiment(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such experiment file")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    known = {"name", "data_root", "runs_root", "report_dir", "seed", "render", "generate", "train", "eval"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    for key in ("render", "generate", "train", "eval"):
        if not isinstance(cfg.get(key, {}), dict):
            raise UserError(f"{path}: '{key}' must be a mapping")
    cfg.setdefault("name", p.stem)
    return cfg


def plan(cfg: dict[str, Any]) -> list[Stage]:
    name = cfg["name"]
    seed = int(cfg.get("seed", 0))
    data = Path(cfg.get("data_root", f"data/experiments/{name}"))
    runs = Path(cfg.get("runs_root", f"runs/{name}"))
    report = Path(cfg.get("report_dir", f"report/{name}"))
    r, g, t, e = cfg.get("render", {}), cfg.get("generate", {}), cfg.get("train", {}), cfg.get("eval", {})
    stages: list[Stage] = []

    renders = data / "renders"
    argv = ["render", "--out", str(renders), "--seed", str(seed)]
    for key in ("source", "root", "categories", "max_shapes", "views", "size", "workers"):
        if key in r:
            value = ",".join(map(str, r[key])) if isinstance(r[key], list) else str(r[key])
            argv += [f"--{key.replace('_', '-')}", value]
    stages.append(Stage("render", argv, renders, renders / "index.json"))

    # Every domain is generated for all splits: training reads its train split, eval
    # reads the test split of each domain.
    common = ["--in", str(renders), "--split", "all", "--seed", str(seed), "--no-progress"]
    for key in ("steps", "batch_size", "model", "n_in", "n_out", "space", "t_out", "nproc", "threads"):
        if key in g:
            common += [f"--{key.replace('_', '-')}", str(g[key])]
    domains: dict[str, Path] = {"clean": renders}
    for tv in g.get("t_in", [0.25, 0.5, 0.75]):
        out = data / "aug" / tag(float(tv))
        stages.append(Stage(f"generate {tag(float(tv))}", ["generate", "--out", str(out), "--t-in", str(tv), *common],
                            out, out / "index.json"))
        domains[tag(float(tv))] = out
    if g.get("copy_paste", True):
        out = data / "aug" / "copy-paste"
        bg = g.get("backgrounds", "/usr/share/backgrounds/mate/nature")
        cp_common = [a for a in common]
        if "--batch-size" in cp_common:
            i = cp_common.index("--batch-size")
            del cp_common[i:i + 2]
        stages.append(Stage("generate copy-paste", ["generate", "--mode", "copy-paste", "--backgrounds", str(bg),
                                                    "--out", str(out), "--in", str(renders), "--split", "all",
                                                    "--seed", str(seed), "--no-progress"], out, out / "index.json"))
        domains["copy-paste"] = out

    models: dict[str, Path] = {}
    train_config = t.get("config", "configs/train/tiny.yaml")
    extra = [str(a) for a in t.get("args", [])]
    for dom, path in domains.items():
        run_name = f"svr-{dom}"
        run_dir = runs / run_name
        shards = [str(path)]
        if dom != "clean" and t.get("mix_clean", False):
            shards.append(str(renders))
        argv = ["train", "--config", train_config, "--seed_everything", str(seed), "--runs_dir", str(runs),
                "--name", run_name, "--data.shards", "[" + ",".join(shards) + "]", *extra]
        last = run_dir / "checkpoints" / "last.ckpt"
        stages.append(Stage(f"train {run_name}", argv, run_dir, last, resume_argv=["--ckpt_path", str(last)]))
        models[run_name] = last

    # Test-only real domains, eval: {extra_domains: {name: "pix3d:ROOT" | "images:DIR"}} (eval/real.py).
    # Photos have no camera: a camera estimator is trained on the clean renders for them (or for
    # every domain with eval: {camera: predicted}); eval: {camera_config, camera_args} set it up.
    test_domains: dict[str, str] = {dom: str(path) for dom, path in domains.items()}
    real_argv: list[str] = []
    for dom, spec in (e.get("extra_domains") or {}).items():
        if not (isinstance(spec, str) and spec.split(":", 1)[0] in ("pix3d", "images") and ":" in spec):
            raise UserError(f"eval.extra_domains.{dom}: expected 'pix3d:ROOT' or 'images:DIR', got {spec!r}")
        if str(dom) in test_domains:
            raise UserError(f"eval.extra_domains.{dom}: the experiment already has a domain of that name")
        test_domains[str(dom)] = spec
    if len(test_domains) > len(domains):
        real_argv = ["--cache-dir", str(data / "real"), "--crop-size", str(r.get("size", 224))]
        if "categories" in e:
            real_argv += ["--categories", ",".join(map(str, e["categories"]))]
    if e.get("camera", "gt") == "predicted" or any(v.startswith("images:") for v in test_domains.values()):
        cam_last = runs / "camera" / "checkpoints" / "last.ckpt"
        stages.append(Stage("train camera", ["train-camera", "--config", e.get("camera_config",
                                                                                "configs/train/camera_tiny.yaml"),
                                             "--seed_everything", str(seed), "--runs_dir", str(runs), "--name",
                                             "camera", "--data.shards", str(renders),
                                             *[str(a) for a in e.get("camera_args", [])]],
                            runs / "camera", cam_last, resume_argv=["--ckpt_path", str(cam_last)]))
        real_argv += ["--camera-ckpt", str(cam_last), "--camera", e.get("camera", "gt")]

    # One eval stage per model: the model is loaded once and scored on every test domain.
    eval_dirs = []
    for model, ckpt in models.items():
        outs = [runs / "eval" / f"{model}__{dom}" for dom in test_domains]
        argv = ["eval", "--ckpt", str(ckpt), "--data", *test_domains.values(), "--split",
                e.get("split", "test"), "--out", *map(str, outs), "--no-progress", *real_argv]
        for key in ("views",):
            if key in e:
                argv += [f"--{key}", ",".join(map(str, e[key]))]
        for key in ("resolution", "points"):
            if key in e:
                argv += [f"--{key}", str(e[key])]
        stages.append(Stage(f"eval {model}", argv, outs[-1], outs[-1] / "summary.json"))
        eval_dirs += [str(o) for o in outs]
    stages.append(Stage("report", ["report", *eval_dirs, "--out", str(report)], report, None))
    return stages


def run_experiment(path: str | Path, dry_run: bool = False, log=print) -> int:
    cfg = load_experiment(path)
    stages = plan(cfg)
    runs = Path(cfg.get("runs_root", f"runs/{cfg['name']}"))
    if dry_run:
        for s in stages:
            log(f"{'done' if s.is_done(runs) else 'todo'}  {s.name}: cdc-aug {' '.join(s.argv)}")
        return 0
    write_config(runs, cfg, name="experiment.yaml")
    logs = runs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    timings = []
    for i, s in enumerate(stages, 1):
        prefix = f"[{i}/{len(stages)}] {s.name}"
        if s.is_done(runs):
            log(f"{prefix}: done before, skipped")
            timings.append((s.name, 0.0, "skipped"))
            continue
        logfile = logs / (s.name.replace(" ", "_") + ".log")
        argv = list(s.argv)
        if s.resume_argv and s.done_file is not None and s.done_file.exists():
            argv += s.resume_argv
        t0 = time.monotonic()
        with open(logfile, "a") as fh:
            fh.write(f"$ cdc-aug {' '.join(argv)}\n")
            fh.flush()
            proc = subprocess.run([sys.executable, "-m", "cdc_aug", *argv], stdout=fh, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        dt = time.monotonic() - t0
        if proc.returncode != 0 or (s.done_file is not None and not s.done_file.exists()):
            tail = "".join(logfile.read_text(errors="replace").splitlines(True)[-15:])
            log(f"{prefix}: FAILED after {dt:.0f}s (exit {proc.returncode}); log {logfile}:\n{tail}")
            return 1
        s.marker(runs).write_text(f"{dt:.1f}\n")
        log(f"{prefix}: ok in {dt:.0f}s -> {s.output}")
        timings.append((s.name, dt, "ran"))
    total = time.monotonic() - t_all
    (runs / "timings.tsv").write_text("".join(f"{n}\t{d:.1f}\t{st}\n" for n, d, st in timings) + f"total\t{total:.1f}\t\n")
    log(f"experiment {cfg['name']}: finished in {total:.0f}s; report in {stages[-1].output}")
    return 0
