"""``cdc-aug experiment``: its settings are ``ExperimentSettings``."""

from __future__ import annotations

from dataclasses import dataclass

from cdc_aug.settings import setting

HELP = "{help}; stages already done are skipped."


@dataclass(kw_only=True)
class ExperimentSettings:
    experiment: str | None = setting(None, "experiment YAML, e.g. configs/experiments/smoke.yaml", positional=True)
    dry_run: bool = setting(False, "list the stages and the commands they run")
    jobs: int = setting(1, "stages run side by side where their inputs allow (e.g. 2 single-threaded trainings "
                           "on 2 cores)")


def settings_class():
    return ExperimentSettings


def run(s: ExperimentSettings) -> int:
    from cdc_aug.errors import UserError
    from cdc_aug.experiment import run_experiment

    if not s.experiment:
        raise UserError("EXPERIMENT: give an experiment YAML, e.g. configs/experiments/smoke.yaml")
    return run_experiment(s.experiment, dry_run=s.dry_run, jobs=s.jobs)
