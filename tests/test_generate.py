import json
import subprocess
import sys

import numpy as np
import pytest
from fake_renders import make_render_dir, write_backgrounds

from cdc_aug.cli import main
from cdc_aug.distributed import first_slurm_host
from cdc_aug.layout import split_of_key, view_of_key
from cdc_aug.samples import decode_sample
from cdc_aug.shards import ShardStore, iter_tar_samples, read_index, shard_paths
from cdc_aug.verify import verify


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    return make_render_dir(tmp_path_factory.mktemp("renders"))


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory):
    return write_backgrounds(tmp_path_factory.mktemp("bg"))


def _images(out):
    got = {}
    for p in shard_paths(out):
        for s in iter_tar_samples(p):
            got[s["__key__"]] = s["image.png"]
    return got


def _per_shard(extra) -> list[str]:
    # Small output shards, so that the fake renders (8 train / 12 samples in 2-sample
    # input shards of 4) give several output shards that straddle input shards.
    return [] if "--samples-per-shard" in extra else ["--samples-per-shard", "3"]


def _cp(renders, backgrounds, out, *extra):
    return main(["generate", "--mode", "copy-paste", "--backgrounds", str(backgrounds), "--in", str(renders),
                 "--out", str(out), "--no-progress", *_per_shard(extra), *extra])


def _shard_bytes(out) -> list[bytes]:
    return [p.read_bytes() for p in shard_paths(out)]


def test_copy_paste_run(renders, backgrounds, tmp_path):
    out = tmp_path / "cp"
    assert _cp(renders, backgrounds, out) == 0
    assert verify(out).ok
    index = read_index(out)
    splits = json.loads((renders / "splits.json").read_text())
    assert index["num_samples"] == len(splits["train"]) * 2
    assert (out / "config.yaml").exists() and (out / "splits.json").exists()
    s = decode_sample(next(iter_tar_samples(shard_paths(out)[0])))
    assert s["image.png"].shape == (32, 32, 3)
    assert s["aug.json"]["mode"] == "copy-paste" and s["aug.json"]["key"] == s["__key__"]
    # object pixels come from the render, background from a photo
    src = {k: decode_sample(v) for k, v in ((x["__key__"], x) for x in iter_tar_samples(shard_paths(renders)[0]))}
    rgba = src[s["__key__"]]["rgba.png"]
    inside = rgba[..., 3] == 255
    assert np.array_equal(s["image.png"][inside], rgba[inside][:, :3])
    assert s["image.png"][~inside].std() > 10


def test_same_seed_same_output_and_split_all(renders, backgrounds, tmp_path):
    assert _cp(renders, backgrounds, tmp_path / "a") == 0
    assert _cp(renders, backgrounds, tmp_path / "b") == 0
    assert _images(tmp_path / "a") == _images(tmp_path / "b")
    assert _cp(renders, backgrounds, tmp_path / "c", "--seed", "1") == 0
    assert _images(tmp_path / "a") != _images(tmp_path / "c")
    assert _cp(renders, backgrounds, tmp_path / "all", "--split", "all") == 0
    assert read_index(tmp_path / "all")["num_samples"] == read_index(renders)["num_samples"]


def test_interrupted_run_resumes_exactly_once(renders, backgrounds, tmp_path):
    out = tmp_path / "cp"
    assert _cp(renders, backgrounds, out) == 0
    want = _images(out)
    # What a kill leaves: shard 1 half-written (temp file, no sidecar), no index yet.
    side = out / "shards" / "aug-000001.tar.json"
    side.unlink()
    (out / "shards" / ".aug-000002.tar.tmp-999").write_bytes(b"partial")
    (out / "index.json").unlink()
    assert _cp(renders, backgrounds, out) == 0
    assert verify(out).ok
    assert _images(out) == want
    assert not list((out / "shards").glob(".*tmp*"))


def test_refuses_other_parameters_unless_overwrite(renders, backgrounds, tmp_path, capsys):
    out = tmp_path / "cp"
    assert _cp(renders, backgrounds, out) == 0
    assert _cp(renders, backgrounds, out, "--seed", "3") == 2
    assert "other parameters (seed)" in capsys.readouterr().err
    assert _cp(renders, backgrounds, out, "--seed", "3", "--overwrite") == 0
    # batch size is how, not what: resuming with another one is allowed
    assert _cp(renders, backgrounds, out, "--seed", "3", "--batch-size", "1") == 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--in", "{missing}"], "no such directory"),
        (["--t-in", "1.5"], "must lie in [0, 1]"),
        (["--t-in", "abc"], "not a number"),
        (["--t-out", "-0.1"], "must lie in [0, 1]"),
        (["--split", "nope"], "--split nope"),
        (["--mode", "copy-paste"], "needs --backgrounds"),
        (["--mode", "copy-paste", "--backgrounds", "{missing}"], "--backgrounds"),
        (["--prompt", "a {thing}"], "--prompt"),
        (["--t-in", "0.25", "--steps", "2"], "--t-in 0.25 guides 0 of --steps 2"),
    ],
)
def test_bad_input(renders, tmp_path, capsys, argv, message):
    argv = [a.replace("{missing}", str(tmp_path / "missing")) for a in argv]
    args = ["generate", "--out", str(tmp_path / "o"), "--no-progress"]
    if "--in" not in argv:
        args += ["--in", str(renders)]
    assert main(args + argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_empty_and_wrong_stage_input(renders, backgrounds, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["generate", "--in", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "index.json" in capsys.readouterr().err
    assert _cp(renders, backgrounds, tmp_path / "cp") == 0
    assert main(["generate", "--in", str(tmp_path / "cp"), "--out", str(tmp_path / "o")]) == 2
    assert "not renders" in capsys.readouterr().err


def test_corrupt_input_shard_is_recorded(renders, backgrounds, tmp_path):
    import shutil

    bad = tmp_path / "renders"
    shutil.copytree(renders, bad)
    p = bad / "shards" / "renders-000001.tar"
    p.write_bytes(p.read_bytes()[:1500])  # truncated mid-member
    out = tmp_path / "cp"
    assert _cp(bad, backgrounds, out) == 0
    assert verify(out).ok
    fails = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert any("renders-000001.tar" in f["item"] and "corrupt" in f["reason"] for f in fails)
    assert read_index(out)["num_samples"] > 0


def test_two_processes_match_one(renders, backgrounds, tmp_path):
    assert _cp(renders, backgrounds, tmp_path / "one") == 0
    assert _cp(renders, backgrounds, tmp_path / "two", "--nproc", "2") == 0
    assert verify(tmp_path / "two").ok
    assert _images(tmp_path / "one") == _images(tmp_path / "two")


def test_torchrun_two_nodes_on_loopback(renders, backgrounds, tmp_path):
    """Two torchrun launches (node ranks 0 and 1) rendezvous on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["generate", "--mode", "copy-paste", "--backgrounds", str(backgrounds), "--in", str(renders),
            "--out", str(tmp_path / "two"), "--no-progress", "--threads", "1"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
             "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
             "-m", "cdc_aug", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert _cp(renders, backgrounds, tmp_path / "one") == 0
    assert _images(tmp_path / "one") == _images(tmp_path / "two")
    assert verify(tmp_path / "two").ok


def test_slurm_nodelist():
    assert first_slurm_host("gpu[03-05,09],cpu1") == "gpu03"
    assert first_slurm_host("node7") == "node7"


# -- masked ILVR through a tiny randomly initialised pixel model ------------------------
def _ilvr(renders, model, out, *extra):
    return main(["generate", "--in", str(renders), "--out", str(out), "--model", str(model), "--steps", "3",
                 "--no-progress", *_per_shard(extra), *extra])


def test_ilvr_run_and_aug_json(renders, tiny_model, tmp_path):
    assert _ilvr(renders, tiny_model, tmp_path / "g", "--t-in", "1", "--blur", "0") == 0
    assert verify(tmp_path / "g").ok
    s = decode_sample(next(iter_tar_samples(shard_paths(tmp_path / "g")[0])))
    aug = s["aug.json"]
    assert aug["mode"] == "ilvr" and aug["t_in"] == 1.0 and aug["steps"] == 3 and "prompt" not in aug
    assert s["image.png"].shape == (32, 32, 3) and s["image.png"].dtype == np.uint8
    import yaml

    cfg = yaml.safe_load((tmp_path / "g" / "config.yaml").read_text())
    assert cfg["config"]["model_identity"]["kind"] == "local" and len(cfg["config"]["model_identity"]["sha256"]) == 64
    # t_in = 1, n_in = 1: the object is kept exactly (up to 8-bit rounding) on a pixel model
    src = {x["__key__"]: decode_sample(x) for x in iter_tar_samples(shard_paths(renders)[0])}
    inside = src[s["__key__"]]["mask.png"] > 127
    diff = np.abs(s["image.png"][inside].astype(int) - src[s["__key__"]]["rgba.png"][inside][:, :3].astype(int))
    assert diff.max() <= 1


def test_ilvr_sweep_and_batch_independence(renders, tiny_model, tmp_path):
    assert _ilvr(renders, tiny_model, tmp_path / "sweep", "--t-in", "0,0.5", "--batch-size", "3") == 0
    assert verify(tmp_path / "sweep" / "t000").ok and verify(tmp_path / "sweep" / "t050").ok
    assert _ilvr(renders, tiny_model, tmp_path / "one", "--t-in", "0.5", "--batch-size", "1") == 0
    a, b = _images(tmp_path / "sweep" / "t050"), _images(tmp_path / "one")
    assert a.keys() == b.keys()
    # per-sample generators: a sample's image does not depend on its batch-mates
    for k in a:
        x = decode_sample({"__key__": k, "image.png": a[k]})["image.png"].astype(int)
        y = decode_sample({"__key__": k, "image.png": b[k]})["image.png"].astype(int)
        assert np.abs(x - y).max() <= 1
    assert _images(tmp_path / "sweep" / "t000") != a


def test_ilvr_two_processes_byte_identical(renders, tiny_model, tmp_path):
    # a sweep: the two processes start once and run both t_in values
    assert _ilvr(renders, tiny_model, tmp_path / "one", "--threads", "1", "--t-in", "0.5,1") == 0
    assert _ilvr(renders, tiny_model, tmp_path / "two", "--nproc", "2", "--t-in", "0.5,1") == 0
    for t in ("t050", "t100"):
        one, two = tmp_path / "one" / t, tmp_path / "two" / t
        assert len(shard_paths(one)) == 3  # 8 train samples, 3 per output shard
        assert _shard_bytes(one) == _shard_bytes(two)
        assert read_index(one)["shards"] == read_index(two)["shards"]
        assert verify(two).ok
    assert _shard_bytes(tmp_path / "one" / "t050") != _shard_bytes(tmp_path / "one" / "t100")


def test_one_input_shard_is_split_across_processes(tmp_path, tiny_model):
    """A render set in one shard still gives every rank output shards to write."""
    from cdc_aug.generate import output_shards_of_rank

    assert list(output_shards_of_rank(5, 0, 2)) == [0, 2, 4] and list(output_shards_of_rank(5, 1, 2)) == [1, 3]
    one_shard = make_render_dir(tmp_path / "renders", shapes=4, views=2, shapes_per_shard=4)
    assert len(read_index(one_shard)["shards"]) == 1
    args = ("--split", "all", "--samples-per-shard", "2", "--threads", "1")
    assert _ilvr(one_shard, tiny_model, tmp_path / "one", *args) == 0
    assert _ilvr(one_shard, tiny_model, tmp_path / "two", *args, "--nproc", "2") == 0
    assert len(shard_paths(tmp_path / "one")) == 4
    assert _shard_bytes(tmp_path / "one") == _shard_bytes(tmp_path / "two")
    assert verify(tmp_path / "two").ok


def test_copied_render_fields(renders, backgrounds, tmp_path):
    """normal.png and depth.npy travel with the sample, byte for byte, for training's Laplacian loss."""
    assert _cp(renders, backgrounds, tmp_path / "cp") == 0
    src = {x["__key__"]: x for p in shard_paths(renders) for x in iter_tar_samples(p)}
    for p in shard_paths(tmp_path / "cp"):
        for s in iter_tar_samples(p):
            for f in ("normal.png", "depth.npy", "mask.png", "camera.json", "meta.json"):
                assert s[f] == src[s["__key__"]][f]


def test_samples_per_shard_changes_layout_not_samples(renders, backgrounds, tmp_path, capsys):
    assert _cp(renders, backgrounds, tmp_path / "s2", "--samples-per-shard", "2") == 0
    assert _cp(renders, backgrounds, tmp_path / "s5", "--samples-per-shard", "5") == 0
    assert [s["count"] for s in read_index(tmp_path / "s2")["shards"]] == [2, 2, 2, 2]
    assert [s["count"] for s in read_index(tmp_path / "s5")["shards"]] == [5, 3]
    assert _images(tmp_path / "s2") == _images(tmp_path / "s5")
    # the layout is fixed for the life of a run: a resume with another value is refused
    capsys.readouterr()
    assert _cp(renders, backgrounds, tmp_path / "s2", "--samples-per-shard", "5") == 2
    err = capsys.readouterr().err.strip()
    assert "samples_per_shard" in err and len(err.splitlines()) == 1
    assert _cp(renders, backgrounds, tmp_path / "s2", "--samples-per-shard", "0") == 2
    assert "--samples-per-shard 0" in capsys.readouterr().err


def test_input_without_sidecars_is_scanned(renders, backgrounds, tmp_path):
    """The sample order comes from the input shards' sidecars, or from the tars themselves."""
    import shutil

    bare = tmp_path / "renders"
    shutil.copytree(renders, bare)
    for side in (bare / "shards").glob("*.tar.json"):
        side.unlink()
    assert _cp(renders, backgrounds, tmp_path / "a") == 0
    assert _cp(bare, backgrounds, tmp_path / "b") == 0
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing catches it, nothing after it runs."""


def test_kill_inside_a_shard_loses_only_that_shard(renders, backgrounds, tmp_path, monkeypatch):
    import cdc_aug.shards as shards

    want = tmp_path / "want"
    assert _cp(renders, backgrounds, want, "--split", "all") == 0  # 12 samples in 4 shards of 3
    real = shards.encode_sample
    calls = {"n": 0}

    def dying(sample, limit):
        calls["n"] += 1
        if calls["n"] > limit:
            raise _Killed()
        return real(sample)

    out = tmp_path / "cp"
    monkeypatch.setattr(shards, "encode_sample", lambda s: dying(s, 3 + 2))  # 2 samples into shard 1
    with pytest.raises(_Killed):
        _cp(renders, backgrounds, out, "--split", "all")
    first = out / "shards" / "aug-000000.tar"
    assert ShardStore(out, "aug", "aug").is_complete(0) and not (out / "shards" / "aug-000001.tar").exists()
    stamp = first.stat().st_mtime_ns
    calls["n"] = 0
    monkeypatch.setattr(shards, "encode_sample", lambda s: dying(s, 10**9))
    assert _cp(renders, backgrounds, out, "--split", "all") == 0
    assert calls["n"] == 12 - 3  # only the shards not complete were written again
    assert first.stat().st_mtime_ns == stamp
    assert _shard_bytes(out) == _shard_bytes(want)
    assert verify(out).ok and not list((out / "shards").glob(".*tmp*"))


def test_kill_and_resume(renders, tiny_model, tmp_path):
    """SIGKILL the run once its first shard is written; the rerun completes it exactly."""
    import os
    import signal
    import time

    out = tmp_path / "g"
    cmd = [sys.executable, "-m", "cdc_aug", "generate", "--in", str(renders), "--out", str(out), "--model",
           str(tiny_model), "--steps", "20", "--batch-size", "1", "--no-progress", "--split", "all",
           "--samples-per-shard", "3"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first = out / "shards" / "aug-000000.tar.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (out / "index.json").exists()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    assert verify(out).ok
    assert read_index(out)["num_samples"] == read_index(renders)["num_samples"]


def test_default_shard_size_gives_every_process_work():
    from cdc_aug.generate import output_shard_size

    assert output_shard_size(None, 324) == 41  # 8 shards, 4 for each of 2 processes (was 256 + 68)
    assert output_shard_size(None, 100_000) == 256
    assert output_shard_size(None, 3) == 1
    assert output_shard_size(5, 324) == 5  # the setting wins


def test_test_views_skip_the_other_views_of_test_shapes_only(tmp_path, tiny_model):
    """--test-views (what an experiment passes: its eval views) drops the other views of the
    test shapes, keeps every view of the train and val shapes, and changes no kept image."""
    renders = make_render_dir(tmp_path / "renders", shapes=4, views=3)
    assert _ilvr(renders, tiny_model, tmp_path / "all", "--split", "all", "--t-in", "0.5") == 0
    assert _ilvr(renders, tiny_model, tmp_path / "some", "--split", "all", "--t-in", "0.5", "--test-views", "0,2") == 0
    splits = json.loads((renders / "splits.json").read_text())
    full, some = _images(tmp_path / "all"), _images(tmp_path / "some")
    assert set(some) == {k for k in full if split_of_key(k) not in splits["test"] or view_of_key(k) in (0, 2)}
    assert len(some) == len(full) - len(splits["test"])
    assert {k: full[k] for k in some} == some
    assert verify(tmp_path / "some").ok


def test_test_views_out_of_range_is_one_line(tiny_model, tmp_path, capsys):
    renders = make_render_dir(tmp_path / "renders")
    index = json.loads((renders / "index.json").read_text())
    (renders / "index.json").write_text(json.dumps({**index, "views": 2}))  # as the render stage records it
    assert _ilvr(renders, tiny_model, tmp_path / "g", "--split", "all", "--test-views", "5") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--test-views" in err and "not 5" in err
