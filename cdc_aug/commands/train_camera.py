"""``cdc-aug train-camera``: the camera estimator (train_svr.camera) on render shards or
generate runs, through the same LightningCLI as ``cdc-aug train`` (run layout, --config,
--name, --runs_dir, --ckpt_path). Example::

    cdc-aug train-camera --config configs/train/camera_tiny.yaml --data.shards data/renders --name camera
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from train_svr.camera import main as camera_main

    return camera_main(argv)
