"""What checking a shard against index.json costs its readers (cdc_aug.shards.verified_samples).

Writes one render-like shard (``--samples`` samples of ``--size``² rgba/mask/normal PNGs,
depth.npy and JSON, noisy images so PNGs are not trivially small), then times, with the
file in the page cache as in training:

- verify: the sha256 pass ``check_shard`` makes the first time a process reads the shard;
- read: walking the tar's samples (``iter_tar_samples``), the least any reader does;
- read+decode: the same plus decoding every PNG/NPY field, what train and eval do;
- re-check: ``check_shard`` again in the same process (stat only, cached).

Prints seconds and the ratios verify/read and verify/(read+decode).

    .venv/bin/python bench/shard_verify_cost.py [--samples 256] [--size 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc_aug import shards  # noqa: E402
from cdc_aug.samples import decode_sample, make_key  # noqa: E402


def _samples(n: int, size: int):
    rng = np.random.default_rng(0)
    for i in range(n):
        rgba = rng.integers(0, 255, (size, size, 4), dtype=np.uint8)
        yield {"__key__": make_key("03001627", f"m{i // 8}", i % 8), "rgba.png": rgba,
               "mask.png": (rgba[..., 3] > 127).astype(np.uint8) * 255,
               "normal.png": rgba[..., :3], "depth.npy": rng.random((size, size), dtype=np.float32),
               "camera.json": {"K": np.eye(3), "RT": np.eye(3, 4)}, "meta.json": {"i": i}}


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = shards.ShardStore(tmp, "renders", "render")
        meta = store.write(0, _samples(args.samples, args.size))
        entry = store.finalize(1)["shards"][0]
        path = store.path(0)
        for _ in shards.iter_tar_samples(path):  # warm the page cache
            pass

        def verify():
            shards._VERIFIED.clear()
            shards.check_shard(path, entry)

        t_verify = best(verify, args.repeats)
        t_read = best(lambda: sum(1 for _ in shards.iter_tar_samples(path)), args.repeats)
        t_decode = best(lambda: [decode_sample(s) for s in shards.iter_tar_samples(path)], args.repeats)
        shards.check_shard(path, entry)
        t_again = best(lambda: shards.check_shard(path, entry), args.repeats)
    mb = meta["bytes"] / 1e6
    print(f"shard: {args.samples} samples of {args.size}x{args.size}, {mb:.1f} MB")
    print(f"verify (sha256, first read in a process): {t_verify:.3f} s  ({mb / t_verify:.0f} MB/s)")
    print(f"read (tar walk):                          {t_read:.3f} s")
    print(f"read + decode every field:                {t_decode:.3f} s")
    print(f"re-check in the same process (cached):    {t_again * 1e6:.0f} us")
    print(f"ratio verify/read {t_verify / t_read:.2f}, verify/(read+decode) {t_verify / t_decode:.3f}")


if __name__ == "__main__":
    main()
