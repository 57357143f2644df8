"""``cdc-aug experiment``: the whole question in one command.

render -> generate (each T_in, copy-paste, and the test-only domains) -> one SVR model per
training set and training seed -> eval of every model on every test domain -> report.
Each stage runs as its own ``cdc-aug`` command (what a user would type), logs to a file,
and is skipped when its output is already complete, so an interrupted experiment resumes
where it stopped.

The experiment file (configs/experiments/*.yaml)::

    name: cpu_medium
    seed: 0                 # data seed: render splits and views, generate noise
    seeds: [0, 1, 2]        # training seeds: every training set is trained once per seed
    render:   {...}         # `cdc-aug render` options (flag names, - or _)
    generate: {...}         # `cdc-aug generate` options shared by every generated domain, plus
                            #   t_in: [0.25, 0.5, 0.75]   the masked-ILVR training sets
                            #   copy_paste: true           the copy-paste training set (backgrounds:)
    test_domains:           # test-only (out-of-domain) sets, generated for the test split only
      ood-photos: {mode: copy-paste, backgrounds: configs/backgrounds/heldout_photos.txt}
      ood-xt050: {t_in: 0.5, space: xt}
    train: {config: configs/train/tiny.yaml, args: [...]}
    eval:  {...}            # `cdc-aug eval` options, plus real photographs as test-only domains
                            #   (eval/real.py) and the camera estimator trained for them:
                            #   extra_domains: {pix3d: "pix3d:/data/Pix3D", photos: "images:/data/photos"}
                            #   camera_config: configs/train/camera_tiny.yaml   camera_args: [...]

Every key of ``render``, ``generate``, ``test_domains.*`` and ``eval`` is checked against
the settings declaration of the command it is handed to (its dataclass: cdc_aug/settings.py),
key and value, so a typo is a one-line error before any work,
never a silently dropped setting. The models differ only in their training data and seed:
every train stage gets the same config and arguments otherwise (tests/test_experiment.py).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .runinfo import write_config
from .sampling import t_tag as tag
from .sampling import t_values as sweep_values
from .settings import check_section, flags

TOP_KEYS = {"name", "data_root", "runs_root", "report_dir", "seed", "seeds", "render", "generate", "test_domains",
            "train", "eval"}
# Options the experiment sets itself: not settable from the file.
OWN_OPTIONS = {
    "render": {"out", "seed", "overwrite"},
    "generate": {"in_dir", "out_dir", "split", "seed", "progress", "overwrite", "label", "t_in", "mode", "test_views"},
    "eval": {"ckpt", "data", "out", "progress"},
}
# Keys of the file's sections that are not command options.
EXTRA_KEYS = {"generate": {"t_in", "copy_paste", "backgrounds"}, "train": {"config", "args", "mix_clean"},
              "test_domain": {"mode", "t_in", "backgrounds"},
              "eval": {"extra_domains", "camera_config", "camera_args"}}
DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,40}")


@dataclass
class Stage:
    name: str
    argv: list[str]
    output: Path
    done_file: Path | None  # what the stage leaves behind (None: the stage always runs)
    resume_argv: list[str] | None = None  # appended when a previous attempt left done_file behind
    makes: tuple[str, ...] = ()  # generate: the domains it writes
    reads: tuple[str, ...] = ()  # train: the domains it trains on

    def marker(self, runs: Path) -> Path:
        return runs / "logs" / (self.name.replace(" ", "_") + ".done")

    def is_done(self, runs: Path) -> bool:
        # The marker is written only after the command succeeded: a killed stage whose
        # output file already exists (a mid-training checkpoint) is not taken as done.
        return self.done_file is not None and self.done_file.exists() and self.marker(runs).exists()


@cache
def _declaration(command: str):
    """(settings dataclass, flag-type overrides) of a ``cdc-aug`` subcommand: the one
    declaration of what the experiment may pass on (cdc_aug/settings.py)."""
    from .cli import command_module

    module = command_module(command)
    return module.settings_class(), (module.cli_types() if hasattr(module, "cli_types") else None)


def _check_keys(where: str, section: dict, command: str, extra: set[str] = frozenset()) -> None:
    cls, types = _declaration(command)
    check_section(cls, section, where, own=OWN_OPTIONS.get(command, ()), extra=extra, types=types)


def _flags(command: str, section: dict, skip: set[str] = frozenset()) -> list[str]:
    """A section's options as command-line flags for ``command``, in the file's order."""
    return flags(_declaration(command)[0], section, skip)


def _image_hashes(source: str) -> dict[str, str]:
    from .copy_paste import list_backgrounds

    return {hashlib.sha256(p.read_bytes()).hexdigest(): str(p) for p in list_backgrounds(source)}


def load_experiment(path: str | Path) -> dict[str, Any]:
    """Read and check an experiment file; every problem is a one-line UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such experiment file")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: must be a mapping of settings")
    unknown = sorted(set(cfg) - TOP_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(TOP_KEYS))})")
    for key in ("render", "generate", "train", "eval", "test_domains"):
        if not isinstance(cfg.get(key) or {}, dict):
            raise UserError(f"{path}: '{key}' must be a mapping")
        cfg[key] = cfg.get(key) or {}
    cfg.setdefault("name", p.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", str(cfg["name"])):
        raise UserError(f"{path}: name {cfg['name']!r}: use letters, digits, - and _")
    _check_keys(f"{path}: render", cfg["render"], "render")
    _check_keys(f"{path}: generate", cfg["generate"], "generate", EXTRA_KEYS["generate"])
    _check_keys(f"{path}: eval", cfg["eval"], "eval", EXTRA_KEYS["eval"])
    unknown = sorted(set(cfg["train"]) - EXTRA_KEYS["train"])
    if unknown:
        raise UserError(f"{path}: train: unknown key(s) {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(EXTRA_KEYS['train']))}; trainer options go in train.args)")

    seeds = cfg.get("seeds", [cfg.get("seed", 0)])
    if not isinstance(seeds, list) or not seeds:
        raise UserError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"{path}: seeds must be integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{path}: seeds {seeds}: a seed is listed twice")
    cfg["seeds"] = seeds

    g = cfg["generate"]
    t_values = g.get("t_in", [0.25, 0.5, 0.75])
    try:  # the experiment's own key (one generate stage per value): generate's own check
        t_values = sweep_values(t_values)
    except argparse.ArgumentTypeError as e:
        raise UserError(f"{path}: generate.t_in {e}") from None
    names = ["clean", *(tag(float(t)) for t in t_values)]
    if g.get("copy_paste", True):
        names.append("copy-paste")
        g.setdefault("backgrounds", "/usr/share/backgrounds/mate/nature")
    for name, d in cfg["test_domains"].items():
        if not DOMAIN_NAME.fullmatch(str(name)):
            raise UserError(f"{path}: test_domains: name {name!r}: use letters, digits and - (at most 41)")
        if not isinstance(d, dict):
            raise UserError(f"{path}: test_domains.{name} must be a mapping of generate options")
        _check_keys(f"{path}: test_domains.{name}", d, "generate", EXTRA_KEYS["test_domain"])
        mode = d.get("mode", "ilvr")
        if mode not in ("ilvr", "copy-paste"):
            raise UserError(f"{path}: test_domains.{name}.mode {mode!r}: choose ilvr or copy-paste")
        if mode == "copy-paste" and not d.get("backgrounds"):
            raise UserError(f"{path}: test_domains.{name}: copy-paste needs backgrounds")
        if mode == "ilvr" and "t_in" not in d:
            raise UserError(f"{path}: test_domains.{name}: an ilvr domain needs t_in")
        names.append(str(name))
    names += list(real_domains(cfg["eval"], f"{path}: eval.extra_domains"))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"{path}: domain name(s) {', '.join(dup)} used twice (training sets are named clean, "
                        "tNNN and copy-paste)")

    # A held-out photo set must not share a photo with the copy-paste training backgrounds.
    if g.get("copy_paste", True):
        train_photos = None
        for name, d in cfg["test_domains"].items():
            if d.get("mode") != "copy-paste":
                continue
            if train_photos is None:
                train_photos = _image_hashes(str(g["backgrounds"]))
            shared = [(p, train_photos[h]) for h, p in _image_hashes(str(d["backgrounds"])).items()
                      if h in train_photos]
            if shared:
                raise UserError(f"{path}: test_domains.{name}: held-out photo {shared[0][0]} is also a copy-paste "
                                f"training background ({shared[0][1]}); {len(shared)} shared in all")
    return cfg


def real_domains(e: dict, where: str = "eval.extra_domains") -> dict[str, str]:
    """``eval.extra_domains``: test-only real photographs, ``{name: "pix3d:ROOT" | "images:DIR"}``."""
    out = {}
    for name, spec in (e.get("extra_domains") or {}).items():
        if not DOMAIN_NAME.fullmatch(str(name)):
            raise UserError(f"{where}: name {name!r}: use letters, digits and - (at most 41)")
        if not (isinstance(spec, str) and spec.split(":", 1)[0] in ("pix3d", "images") and spec.split(":", 1)[-1]
                and ":" in spec):
            raise UserError(f"{where}.{name}: expected 'pix3d:ROOT' or 'images:DIR', got {spec!r}")
        out[str(name)] = spec
    return out


def plan(cfg: dict[str, Any]) -> list[Stage]:
    name = cfg["name"]
    seed = int(cfg.get("seed", 0))
    seeds = cfg.get("seeds", [seed])
    data = Path(cfg.get("data_root", f"data/experiments/{name}"))
    runs = Path(cfg.get("runs_root", f"runs/{name}"))
    report = Path(cfg.get("report_dir", f"report/{name}"))
    r, g, t, e = cfg["render"], cfg["generate"], cfg["train"], cfg["eval"]
    stages: list[Stage] = []

    renders = data / "renders"
    argv = ["render", "--out", str(renders), "--seed", str(seed), *_flags("render", r)]
    stages.append(Stage("render", argv, renders, renders / "index.json"))

    # Training domains are generated for all splits (training reads train and val, eval reads
    # test); test-only domains for the test split alone. Of the test shapes, only the views eval
    # scores are generated: the smoke experiment scores 4 of 36, so this skips 30 % of every
    # generate stage's images, none of which any stage reads.
    shared = {k: v for k, v in g.items() if k not in EXTRA_KEYS["generate"]}
    if e.get("split", "test") == "test" and e.get("views") is not None:
        shared["test_views"] = e["views"]

    def generate(out: Path, split: str, settings: dict, label: str | None = None) -> list[str]:
        argv = ["generate", "--out", str(out), "--in", str(renders), "--split", split, "--seed", str(seed),
                "--no-progress", *_flags("generate", {**shared, **settings})]
        return argv + (["--label", label] if label else [])

    domains: dict[str, Path] = {"clean": renders}
    train_domains = ["clean"]
    t_values = g.get("t_in", [0.25, 0.5, 0.75])
    t_values = [float(tv) for tv in (t_values if isinstance(t_values, list) else [t_values])]
    for tv in t_values:
        domains[tag(tv)] = data / "aug" / tag(tv)
        train_domains.append(tag(tv))
    t_tags = tuple(tag(tv) for tv in t_values)
    if len(t_values) == 1:
        out = domains[t_tags[0]]
        stages.append(Stage(f"generate {t_tags[0]}", generate(out, "all", {"t_in": t_values[0]}), out,
                            out / "index.json", makes=t_tags))
    elif t_values:
        # One generate sweep (aug/tNNN each): its processes start and load the model once
        # for every T_in, not once per value (about 20 CPU-s a stage on 2 cores: spawned
        # workers re-import torch and diffusers). Done when the last value's set is.
        last = domains[t_tags[-1]]
        stages.append(Stage("generate " + ",".join(t_tags), generate(data / "aug", "all", {"t_in": t_values}), last,
                            last / "index.json", makes=t_tags))
    if g.get("copy_paste", True):
        out = data / "aug" / "copy-paste"
        cp = {"mode": "copy-paste", "backgrounds": g["backgrounds"], "batch_size": None}
        stages.append(Stage("generate copy-paste", generate(out, "all", cp), out, out / "index.json",
                            makes=("copy-paste",)))
        domains["copy-paste"] = out
        train_domains.append("copy-paste")
    for dname, d in cfg.get("test_domains", {}).items():
        out = data / "test" / dname
        settings = dict(d)
        if settings.get("mode") == "copy-paste":
            settings["batch_size"] = None
        stages.append(Stage(f"generate {dname}", generate(out, e.get("split", "test"), settings, label=dname),
                            out, out / "index.json", makes=(str(dname),)))
        domains[dname] = out

    # One model per training set and seed; every train command is the same but for its
    # data, name and seed (the experiment's fairness guarantee).
    models: dict[str, Path] = {}
    train_config = t.get("config", "configs/train/tiny.yaml")
    extra = [str(a) for a in t.get("args", [])]
    for dom in train_domains:
        for s in seeds:
            run_name = f"svr-{dom}" if len(seeds) == 1 else f"svr-{dom}-s{s}"
            run_dir = runs / run_name
            reads = (dom, "clean") if dom != "clean" and t.get("mix_clean", False) else (dom,)
            shards = [str(domains[d]) for d in reads]
            argv = ["train", "--config", train_config, "--seed_everything", str(s), "--runs_dir", str(runs),
                    "--name", run_name, "--data.shards", "[" + ",".join(shards) + "]", *extra]
            last = run_dir / "checkpoints" / "last.ckpt"
            stages.append(Stage(f"train {run_name}", argv, run_dir, last, resume_argv=["--ckpt_path", str(last)],
                                reads=reads))
            models[run_name] = last

    # Test-only real photographs (eval.extra_domains, eval/real.py). Photos have no camera: a
    # camera estimator is trained on the clean renders for them (and for every domain with
    # eval: {camera: predicted}) unless eval.camera_ckpt names one.
    test_data = {dom: str(path) for dom, path in domains.items()}
    eval_flags = _flags("eval", e)
    real = real_domains(e)
    if real:
        test_data.update(real)
        eval_flags += ["--cache-dir", str(data / "real")] if "cache_dir" not in e else []
        eval_flags += ["--crop-size", str(r.get("size", 224))] if "crop_size" not in e else []
    needs_camera = e.get("camera") == "predicted" or any(v.startswith("images:") for v in real.values())
    if needs_camera and not e.get("camera_ckpt"):
        cam_last = runs / "camera" / "checkpoints" / "last.ckpt"
        stages.append(Stage("train camera", ["train-camera", "--config", str(e.get("camera_config",
                                                                                    "configs/train/camera_tiny.yaml")),
                                             "--seed_everything", str(seed), "--runs_dir", str(runs), "--name",
                                             "camera", "--data.shards", str(renders),
                                             *[str(a) for a in e.get("camera_args", [])]],
                            runs / "camera", cam_last, resume_argv=["--ckpt_path", str(cam_last)]))
        eval_flags += ["--camera-ckpt", str(cam_last)]

    # One eval stage per model: the model is loaded once and scored on every test domain.
    eval_dirs = []
    for model, ckpt in models.items():
        outs = [runs / "eval" / f"{model}__{dom}" for dom in test_data]
        argv = ["eval", "--ckpt", str(ckpt), "--data", *test_data.values(), "--out", *map(str, outs),
                "--no-progress", *eval_flags]
        stages.append(Stage(f"eval {model}", argv, outs[-1], outs[-1] / "summary.json"))
        eval_dirs += [str(o) for o in outs]
    stages.append(Stage("report", ["report", *eval_dirs, "--out", str(report)], report, None))
    return stages


def machine_info() -> dict[str, Any]:
    """What ran the experiment, for the README's statement of conditions."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - the record must not stop the experiment
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def after(stage: Stage, stages: list[Stage]) -> set[str]:
    """The stages ``stage`` needs finished first: render before everything; a training's
    own sets' generate stages before it (svr-clean and svr-copy-paste train while the ILVR
    sweep still runs, so no core idles at the sweep's uneven end); every generate stage
    before evaluation (every model is scored on every domain); a model's own training (and
    the camera estimator) before its evaluation; everything before the report."""
    kind = stage.name.split(" ")[0]
    names = [s.name for s in stages]
    gens = {n for n in names if n.startswith("generate ")}
    if kind == "render":
        return set()
    if kind == "generate":
        return {"render"}
    if kind == "train":
        return {"render"} | {s.name for s in stages if s.name in gens and set(s.makes) & set(stage.reads)}
    if kind == "eval":
        model = stage.name.split(" ", 1)[1]
        return {"render", f"train {model}"} | gens | ({"train camera"} & set(names))
    return set(names) - {stage.name}


# glibc returns every freed block above its mmap threshold (at most 32 MiB) to the kernel,
# and hands any heap top above its trim threshold back too: a training step frees and
# re-allocates its activations, which then page-fault in again (1,400 mmap/munmap a step of
# the tiny model, a seventh of the stage's CPU time as kernel time). Raised thresholds keep
# them in the process (bench/train_stage.py); a value the user exported wins.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31)}


def stage_env(jobs: int, environ=None) -> dict[str, str]:
    """The environment of a stage's process: the cores shared out between the ``jobs`` stages
    that run side by side. Without this every stage's torch/OpenMP starts one thread per core,
    and two trainings side by side on 2 cores ran 4x slower than with one thread each
    (65 steps: 119 s against 29 s). A thread count the user exported wins."""
    env = dict(os.environ if environ is None else environ)
    env["PYTHONUNBUFFERED"] = "1"
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    for k, v in MALLOC_ENV.items():
        env.setdefault(k, v)
    return env


def run_experiment(path: str | Path, dry_run: bool = False, log=print, jobs: int = 1) -> int:
    """Run (or resume) an experiment; ``jobs`` stages at a time where their dependencies
    allow (``after``): on a 2-core machine two single-threaded trainings or evaluations
    side by side use both cores."""
    cfg = load_experiment(path)
    stages = plan(cfg)
    runs = Path(cfg.get("runs_root", f"runs/{cfg['name']}"))
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: must be at least 1")
    child_env = stage_env(jobs)
    if dry_run:
        for s in stages:
            log(f"{'done' if s.is_done(runs) else 'todo'}  {s.name}: cdc-aug {' '.join(s.argv)}")
        return 0
    write_config(runs, cfg, name="experiment.yaml")
    logs = runs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    timings: dict[str, tuple[float, str]] = {}
    number = {s.name: i for i, s in enumerate(stages, 1)}
    pending = list(stages)
    running: dict[str, tuple[Stage, subprocess.Popen, float, Any, Path]] = {}
    finished: set[str] = set()

    def prefix(s: Stage) -> str:
        return f"[{number[s.name]}/{len(stages)}] {s.name}"

    def stop_all() -> None:
        for _, p, _, _fh, _ in running.values():
            p.terminate()
        for _, p, _, fh, _ in running.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
            fh.close()

    try:
        while pending or running:
            for s in list(pending):
                if len(running) >= jobs:
                    break
                if not after(s, stages) <= finished:
                    continue
                pending.remove(s)
                if s.is_done(runs):
                    log(f"{prefix(s)}: done before, skipped")
                    try:  # the marker holds the stage's own duration, so timings survive a resume
                        timings[s.name] = (float(s.marker(runs).read_text().split()[0]), "earlier")
                    except (OSError, ValueError, IndexError):
                        timings[s.name] = (0.0, "skipped")
                    finished.add(s.name)
                    continue
                logfile = logs / (s.name.replace(" ", "_") + ".log")
                argv = list(s.argv)
                if s.resume_argv and s.done_file is not None and s.done_file.exists():
                    argv += s.resume_argv
                fh = open(logfile, "a")  # noqa: SIM115 - closed when the stage ends
                fh.write(f"$ cdc-aug {' '.join(argv)}\n")
                fh.flush()
                proc = subprocess.Popen([sys.executable, "-m", "cdc_aug", *argv], stdout=fh, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=child_env)
                running[s.name] = (s, proc, time.monotonic(), fh, logfile)
            if not running:
                if pending:  # cannot happen with `after`'s order; never spin
                    raise UserError(f"stages {', '.join(p.name for p in pending)} wait on each other")
                break
            time.sleep(0.5)
            for name, (s, proc, t0, fh, logfile) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del running[name]
                fh.close()
                dt = time.monotonic() - t0
                if rc != 0 or (s.done_file is not None and not s.done_file.exists()):
                    tail = "".join(logfile.read_text(errors="replace").splitlines(True)[-15:])
                    log(f"{prefix(s)}: FAILED after {dt:.0f}s (exit {rc}); log {logfile}:\n{tail}")
                    stop_all()
                    return 1
                s.marker(runs).write_text(f"{dt:.1f}\n")
                log(f"{prefix(s)}: ok in {dt:.0f}s -> {s.output}")
                timings[s.name] = (dt, "ran")
                finished.add(name)
    except KeyboardInterrupt:
        stop_all()
        raise
    timings = [(s.name, *timings[s.name]) for s in stages if s.name in timings]
    wall = time.monotonic() - t_all
    total = sum(d for _, d, _ in timings)  # every stage's own time, this call's and earlier ones
    (runs / "timings.tsv").write_text("".join(f"{n}\t{d:.1f}\t{st}\n" for n, d, st in timings) + f"total\t{total:.1f}\t\n")
    # Only when every stage ran in this call are the timings those of one uninterrupted run.
    note = None
    if any(st != "ran" for _, _, st in timings):
        note = f"resumed; this call ran {wall / 60:.0f} min, the times are every stage's own, summed"
    import json

    (runs / "machine.json").write_text(json.dumps({**machine_info(), "finished": time.strftime("%Y-%m-%d %H:%M UTC",
                                                  time.gmtime()), "jobs": jobs,
                                                  "stage_threads": child_env["OMP_NUM_THREADS"],
                                                  "wall_s_this_call": round(wall, 1),
                                                  "note": note}, indent=1) + "\n")
    log(f"experiment {cfg['name']}: finished in {wall:.0f}s (stages {total:.0f}s in all); report in "
        f"{stages[-1].output}; stage times in {runs / 'timings.tsv'}")
    return 0
