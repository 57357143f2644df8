"""The training loader: persistent DataLoader workers (started once per run) still shuffle
each epoch as a fresh loader would (the epoch reaches them through shared memory,
ShardStream.epoch), and the stream has a length that is the epoch's step count."""

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


@pytest.mark.parametrize("workers, epoch_samples, steps", [(0, 10, 5), (2, 10, 4)])
def test_the_training_stream_has_a_length(renders, workers, epoch_samples, steps):
    """len(loader) is the number of steps an epoch really has (each worker drops its own
    last partial batch: 2 workers x 5 samples in batches of 2 give 4 steps, not 5)."""
    dm = SVRDataModule(str(renders), image_size=32, batch_size=2, num_workers=workers, points=16, val_shapes=0,
                       epoch_samples=epoch_samples)
    dm.trainer = FakeTrainer()
    loader = dm.train_dataloader()
    assert len(loader) == steps == sum(1 for _ in loader)


def test_lightning_sees_the_epoch_length(renders):
    """What the progress bar shows as the total (it showed ``13/--`` without a length)."""
    import lightning as L

    from train_svr.module import SVRModule

    dm = SVRDataModule(str(renders), image_size=32, batch_size=2, num_workers=0, points=16, val_shapes=0,
                       epoch_samples=6)
    model = SVRModule(image_size=32, encoder_width=8, latent_dim=16, decoder_width=8, detail_channels=8)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert trainer.num_training_batches == 3 and trainer.global_step == 3
