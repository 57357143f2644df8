"""``cdc-aug verify``: is a stage's output complete and intact?

Checks every shard listed in index.json: present, byte count and sha256 as recorded,
readable to the end, sample count as recorded, no key twice (within or across shards),
and every field the stage promises present in every sample. When the render directory
recorded ground-truth provenance (index.json ``shape_provenance``), every shape file must
be there, readable and of that provenance (render/groundtruth.py).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from .samples import REQUIRED_FIELDS
from .shards import ShardDamaged, check_shard, iter_tar_samples, read_index


@dataclass
class VerifyReport:
    root: Path
    stage: str
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_shapes(root: Path, report: VerifyReport) -> None:
    from render.groundtruth import GroundTruthError, check_file

    from .errors import UserError
    from .layout import shape_file, shape_provenance, shapes_dir

    try:
        digests = shape_provenance(root)
        shapes = shapes_dir(root) if digests else None
    except UserError as e:
        report.problems.append(f"ground truth: {e}")
        return
    for key, digest in sorted(digests.items()):
        synset, model_id = key.split("_", 1)
        try:
            check_file(shape_file(shapes, synset, model_id), synset, model_id, digest)
        except GroundTruthError as e:
            report.problems.append(f"ground truth: {e}")


def verify(root: str | Path, stage: str | None = None, check_hash: bool = True,
           check_shapes: bool = True) -> VerifyReport:
    root = Path(root)
    index = read_index(root)
    stage = stage or index.get("stage", "render")
    required = REQUIRED_FIELDS.get(stage, [])
    report = VerifyReport(root=root, stage=stage)
    seen: dict[str, str] = {}
    listed = set()
    for entry in index.get("shards", []):
        name = entry["name"]
        listed.add(name)
        path = root / "shards" / name
        report.shards += 1
        try:
            check_shard(path, entry, check_hash=check_hash)
        except ShardDamaged as e:
            report.problems.append(f"{name}: {e.reason}")
            continue
        count = 0
        try:
            for sample in iter_tar_samples(path):
                count += 1
                key = sample["__key__"]
                if key in seen:
                    report.problems.append(f"{name}: key {key} also in {seen[key]}")
                seen[key] = name
                missing = [f for f in required if f not in sample]
                if missing:
                    report.problems.append(f"{name}: {key} lacks {', '.join(missing)}")
        except ShardDamaged as e:
            report.problems.append(f"{name}: {e.reason}")
            continue
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # ValueError: a member twice in a sample
            report.problems.append(f"{name}: unreadable after {count} samples ({e})")
            continue
        if count != entry["count"]:
            report.problems.append(f"{name}: {count} samples, index says {entry['count']}")
        report.samples += count
    if index.get("num_samples") is not None and report.samples != index["num_samples"] and report.ok:
        report.problems.append(f"index.json: num_samples {index['num_samples']} but shards hold {report.samples}")
    if check_shapes:
        _check_shapes(root, report)
    stray = sorted(p.name for p in (root / "shards").glob("*.tar") if p.name not in listed)
    if stray:
        report.problems.append(f"shards not in index.json: {', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''}")
    return report
