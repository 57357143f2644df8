from __future__ import annotations

import argparse


def register(sub, help_text: str) -> None:
    p = sub.add_parser("verify", help=help_text, description=help_text)
    p.add_argument("dir", help="a stage's output directory (holding index.json and shards/)")
    p.add_argument("--stage", choices=["render", "aug"], help="required fields to check (default: from index.json)")
    p.add_argument("--no-hash", action="store_true", help="skip sha256 (faster on large sets)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cdc_aug.shards import read_failures
    from cdc_aug.verify import verify

    report = verify(args.dir, stage=args.stage, check_hash=not args.no_hash)
    failures = read_failures(args.dir)
    print(f"{report.root}: stage {report.stage}, {report.shards} shards, {report.samples} samples, "
          f"{len(failures)} recorded failures")
    if report.ok:
        print("OK")
        return 0
    for line in report.problems:
        print(f"  PROBLEM {line}")
    print(f"FAILED: {len(report.problems)} problems")
    return 1
