"""``cdc-aug verify``: its settings are ``VerifySettings``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cdc_aug.settings import setting


@dataclass(kw_only=True)
class VerifySettings:
    dir: str | None = setting(None, "a stage's output directory (holding index.json and shards/)", positional=True)
    stage: Literal["render", "aug"] | None = setting(None, "required fields to check (default: from index.json)")
    hash: bool = setting(True, "skip sha256 (faster on large sets)", flag="--no-hash")


def settings_class():
    return VerifySettings


def run(s: VerifySettings) -> int:
    from cdc_aug.errors import UserError
    from cdc_aug.shards import read_failures
    from cdc_aug.verify import verify

    if not s.dir:
        raise UserError("DIR: give a stage's output directory")
    report = verify(s.dir, stage=s.stage, check_hash=s.hash)
    failures = read_failures(s.dir)
    print(f"{report.root}: stage {report.stage}, {report.shards} shards, {report.samples} samples, "
          f"{len(failures)} recorded failures")
    if report.ok:
        print("OK")
        return 0
    for line in report.problems:
        print(f"  PROBLEM {line}")
    print(f"FAILED: {len(report.problems)} problems")
    return 1
