from __future__ import annotations

import argparse


def register(sub, help_text: str) -> None:
    p = sub.add_parser("experiment", help=help_text, description=help_text + "; stages already done are skipped.")
    p.add_argument("config", help="experiment YAML, e.g. configs/experiments/smoke.yaml")
    p.add_argument("--dry-run", action="store_true", help="list the stages and the commands they run")
    p.add_argument("--jobs", type=int, default=1,
                   help="stages run side by side where their inputs allow (e.g. 2 single-threaded trainings "
                        "on 2 cores; default: 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cdc_aug.experiment import run_experiment

    return run_experiment(args.config, dry_run=args.dry_run, jobs=args.jobs)
