"""Peak memory of cdc-aug on the full-size bombs of issue 13, with the default caps:

- a .sh3f catalog whose PluginFurnitureCatalog.properties inflates to 1 GiB (``render``);
- an OBJ with ``mtllib /dev/zero`` (``render --source shapenet``);
- a gzip-compressed "shard" holding a 1.5 GiB member, listed in index.json with its true
  size and sha256 (``verify``).

Each command runs in a fresh interpreter; the bench prints its exit code, the lines it
wrote to stderr that start with ``cdc-aug`` or contain ``Traceback``, and its peak
resident memory (``resource.getrusage``). The target is < 1 GB each, no traceback.

    .venv/bin/python bench/bomb_memory.py
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BOX = ("v -0.3 0 -0.2\nv -0.3 0 0.2\nv -0.3 0.8 -0.2\nv -0.3 0.8 0.2\nv 0.3 0 -0.2\nv 0.3 0 0.2\n"
       "v 0.3 0.8 -0.2\nv 0.3 0.8 0.2\nf 1 3 4 2\nf 5 6 8 7\nf 1 2 6 5\nf 3 7 8 4\nf 1 5 7 3\nf 2 4 8 6\n")


def run(args: list[str]) -> tuple[int, list[str], float]:
    code = ("import resource, sys\nfrom cdc_aug.cli import main\nrc = main(sys.argv[1:])\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYOPENGL_PLATFORM": "osmesa"}
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO)
    lines = r.stderr.splitlines()
    rss = [int(x.split()[1]) / 1024 for x in lines if x.startswith("MAXRSS")]
    return r.returncode, [x for x in lines if x.startswith("cdc-aug") or "Traceback" in x], rss[0] if rss else -1


class Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def main() -> None:
    from cdc_aug.shards import sha256_file

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cats = t / "cats"
        cats.mkdir()
        with zipfile.ZipFile(cats / "Bomb.sh3f", "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("chair/chair.obj", BOX)
            with zf.open("PluginFurnitureCatalog.properties", "w", force_zip64=True) as f:
                f.write(b"name=Bomb\nid#1=B#c\nname#1=Chair\nmodel#1=/chair/chair.obj\n")
                block = b"#" * (1 << 20)
                for _ in range(1024):
                    f.write(block)
        with zipfile.ZipFile(cats / "Good.sh3f", "w") as zf:
            zf.writestr("chair/chair.obj", BOX)
            zf.writestr("PluginFurnitureCatalog.properties", "name=Good\nid#1=G#c\nname#1=Chair\n"
                                                              "model#1=/chair/chair.obj\n")
        print(f"properties bomb: {(cats / 'Bomb.sh3f').stat().st_size / 1e6:.1f} MB archive, 1 GiB inflated")
        rc, lines, rss = run(["render", "--source", "sweethome3d", "--root", str(cats), "--categories", "chair",
                              "--out", str(t / "r1"), "--views", "1", "--size", "32", "--no-progress"])
        fails = (t / "r1" / "failures.jsonl").read_text().strip() if (t / "r1" / "failures.jsonl").exists() else ""
        print(f"  render (next to a good catalog): rc {rc}, peak {rss:.0f} MB, {lines}; failures.jsonl: {fails[:200]}")

        sn = t / "sn" / "03001627" / "devzero"
        sn.mkdir(parents=True)
        (sn / "model.obj").write_text("mtllib /dev/zero\n" + BOX)
        (sn.parent / "good").mkdir()
        (sn.parent / "good" / "model.obj").write_text(BOX)
        rc, lines, rss = run(["render", "--source", "shapenet", "--root", str(t / "sn"), "--categories", "chair",
                              "--out", str(t / "r2"), "--views", "1", "--size", "32", "--no-progress"])
        fails = (t / "r2" / "failures.jsonl").read_text().strip() if (t / "r2" / "failures.jsonl").exists() else ""
        print(f"  mtllib /dev/zero: rc {rc}, peak {rss:.0f} MB, {lines}; failures.jsonl: {fails[:160]}")

        shards = t / "g" / "shards"
        shards.mkdir(parents=True)
        p = shards / "renders-000000.tar"
        with gzip.open(p, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tar:
            info = tarfile.TarInfo("03001627_x_00.depth.npy")
            info.size = 3 << 29  # 1.5 GiB
            tar.addfile(info, Zeros(info.size))
        index = {"stage": "render", "num_samples": 1, "shards": [
            {"name": p.name, "count": 1, "bytes": p.stat().st_size, "sha256": sha256_file(p)}]}
        (t / "g" / "index.json").write_text(json.dumps(index))
        print(f"gzip shard: {p.stat().st_size / 1e6:.1f} MB, a 1.5 GiB member")
        rc, lines, rss = run(["verify", str(t / "g")])
        print(f"  verify: rc {rc}, peak {rss:.0f} MB, {lines}")


if __name__ == "__main__":
    main()
