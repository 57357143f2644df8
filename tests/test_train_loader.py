"""Persistent DataLoader workers (started once per run) still shuffle each epoch as a
fresh loader would: the epoch reaches them through shared memory (ShardStream.epoch)."""

from __future__ import annotations

import pytest

from train_svr.datamodule import SVRDataModule


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    from render.api import render_dataset

    out = tmp_path_factory.mktemp("loader") / "renders"
    render_dataset(out, source="procedural", categories=("chair", "table"), max_shapes=2, views=4, size=32,
                   workers=1, seed=0, progress=False, gt_surface_points=2000, gt_sdf_points=4096,
                   gt_occ_points=500)
    return out


class FakeTrainer:
    current_epoch, global_rank, world_size = 0, 0, 1


def keys_per_epoch(renders, workers: int, epochs: int, persistent_loader: bool) -> list[list[str]]:
    def module():
        dm = SVRDataModule(str(renders), image_size=32, batch_size=2, num_workers=workers, points=16,
                           val_shapes=0, epoch_samples=8)
        dm.trainer = FakeTrainer()
        return dm

    out, loader = [], None
    for epoch in range(epochs):
        FakeTrainer.current_epoch = epoch
        if loader is None or not persistent_loader:
            loader = module().train_dataloader()
        out.append([k for batch in loader for k in batch["key"]])
    return out


def test_persistent_worker_sees_each_epoch_like_a_fresh_loader(renders):
    persistent = keys_per_epoch(renders, 1, 3, persistent_loader=True)
    fresh = keys_per_epoch(renders, 0, 3, persistent_loader=False)
    assert persistent == fresh
    assert persistent[0] != persistent[1]  # the epoch did reach the worker
    assert all(len(keys) == 8 for keys in persistent)
