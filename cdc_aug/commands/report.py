from __future__ import annotations

import argparse


def register(sub, help_text: str) -> None:
    p = sub.add_parser("report", help=help_text, description=help_text + (
        ": tables (models x test domains x categories), metrics against T_in, a grid of augmentations "
        "and reconstructions next to their inputs; report.md + one self-contained report.html."))
    p.add_argument("eval_dirs", nargs="+", metavar="EVALDIR", help="`cdc-aug eval` output directories")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eval.report import build_report

    page = build_report(args.eval_dirs, args.out)
    print(f"wrote {page} and {page.with_name('report.md')}")
    return 0
