import json
import subprocess
import sys

import numpy as np
import pytest

from cdc_aug.samples import decode_sample, make_key, sanitize_id
from cdc_aug.shards import Failure, ShardStore, iter_tar_samples, read_failures
from cdc_aug.verify import verify


def _samples(n, start=0):
    for i in range(start, start + n):
        yield {
            "__key__": make_key("03001627", f"m{i}", 0),
            "image.png": np.full((4, 4, 3), i, np.uint8),
            "mask.png": np.zeros((4, 4), np.uint8),
            "camera.json": {"K": np.eye(3)},
            "meta.json": {"i": i},
            "aug.json": {"seed": i},
        }


def test_sanitize_and_key():
    assert sanitize_id("a.b/c_d") == "a-b-c-d"
    assert make_key("03001627", "1a2.b", 3) == "03001627_1a2-b_03"


def test_roundtrip_and_verify(tmp_path):
    store = ShardStore(tmp_path, "aug", stage="aug")
    store.write(0, _samples(3))
    fails = [Failure("03001627/bad", "corrupt OBJ")]
    store.write(1, _samples(2, 3), failures=fails)
    index = store.finalize(2)
    assert index["num_samples"] == 5
    got = [decode_sample(s) for s in iter_tar_samples(store.path(0))]
    assert [s["__key__"] for s in got] == [make_key("03001627", f"m{i}", 0) for i in range(3)]
    assert got[2]["image.png"][0, 0, 0] == 2 and got[1]["meta.json"] == {"i": 1}
    assert read_failures(tmp_path)[0]["reason"] == "corrupt OBJ"
    assert verify(tmp_path).ok


def test_same_samples_same_bytes(tmp_path):
    a = ShardStore(tmp_path / "a", "x", "aug")
    b = ShardStore(tmp_path / "b", "x", "aug")
    assert a.write(0, _samples(3))["sha256"] == b.write(0, _samples(3))["sha256"]


def test_incomplete_shard_is_redone(tmp_path):
    store = ShardStore(tmp_path, "aug", "aug")
    store.write(0, _samples(2))
    # A tar without its sidecar is what a crash between the two renames leaves.
    store.sidecar(0).unlink()
    assert not store.is_complete(0)
    store.write(0, _samples(2))
    assert store.is_complete(0)


def test_verify_finds_problems(tmp_path):
    store = ShardStore(tmp_path, "aug", "aug")
    store.write(0, _samples(2))
    store.write(1, _samples(2, 1))  # key m1 again
    store.finalize(2)
    report = verify(tmp_path)
    assert any("also in" in p for p in report.problems)
    # corrupt one shard: sha256 must catch it
    p = store.path(0)
    data = bytearray(p.read_bytes())
    data[700] ^= 0xFF
    p.write_bytes(bytes(data))
    assert any("sha256" in p for p in verify(tmp_path).problems)


def test_verify_missing_field_and_cli(tmp_path):
    store = ShardStore(tmp_path, "aug", "aug")

    def no_aug():
        for s in _samples(1):
            del s["aug.json"]
            yield s

    store.write(0, no_aug())
    store.finalize(1)
    r = subprocess.run([sys.executable, "-m", "cdc_aug", "verify", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and "lacks aug.json" in r.stdout
    r = subprocess.run([sys.executable, "-m", "cdc_aug", "verify", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and "no such directory" in r.stderr


def test_finalize_refuses_incomplete(tmp_path):
    store = ShardStore(tmp_path, "aug", "aug")
    store.write(0, _samples(1))
    with pytest.raises(RuntimeError, match="not complete"):
        store.finalize(2)
    assert json.loads(store.sidecar(0).read_text())["count"] == 1


def test_webdataset_reads_our_shards(tmp_path):
    """The shards are plain WebDataset tars: webdataset's own reader sees the same samples."""
    import webdataset as wds

    store = ShardStore(tmp_path, "aug", "aug")
    store.write(0, _samples(3))
    ours = list(iter_tar_samples(store.path(0)))
    theirs = list(wds.WebDataset(str(store.path(0)), shardshuffle=False))
    assert [s["__key__"] for s in theirs] == [s["__key__"] for s in ours]
    assert all(t["image.png"] == o["image.png"] and t["meta.json"] == o["meta.json"] for t, o in zip(theirs, ours))
