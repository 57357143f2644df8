"""``cdc-aug report``: its settings are ``ReportSettings``."""

from __future__ import annotations

from dataclasses import dataclass

from cdc_aug.settings import setting

HELP = ("{help}: tables (models x test domains x categories), metrics against T_in, a grid of augmentations and "
        "reconstructions next to their inputs; report.md + one self-contained report.html.")


@dataclass(kw_only=True)
class ReportSettings:
    eval_dirs: list[str] = setting(factory=list, help="`cdc-aug eval` output directories", positional=True,
                                   nargs="*")
    out: str | None = setting(None, "output directory (required)")


def settings_class():
    return ReportSettings


def run(s: ReportSettings) -> int:
    from cdc_aug.errors import UserError
    from eval.report import build_report

    if not s.eval_dirs:
        raise UserError("EVALDIR: give at least one `cdc-aug eval` output directory")
    if not s.out:
        raise UserError("--out is required (on the command line or in --config)")
    page = build_report(s.eval_dirs, s.out)
    print(f"wrote {page} and {page.with_name('report.md')}")
    return 0
