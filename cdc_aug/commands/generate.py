"""``cdc-aug generate``: its settings are ``cdc_aug.generate.GenerateConfig``."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

HELP = ("{help}. The object is guided for t_in of the steps, the scene generated freely (t_out=0); defaults in "
        "cdc_aug/sampling.py, shared with composite. The paper's SVR setting: --config "
        "configs/generate/paper_svr.yaml. Multi-GPU: launch with `torchrun --nproc-per-node G [--nnodes N "
        "--rdzv-endpoint HOST:PORT] -m cdc_aug generate ...` or `srun`; --nproc N spawns N local processes.")


def settings_class():
    from cdc_aug.generate import GenerateConfig

    return GenerateConfig


def cli_types() -> dict:
    from cdc_aug.sampling import t_values

    return {"t_in": t_values}  # a comma list runs a sweep, one subdirectory tNNN each


def make_configs(settings):
    """One GenerateConfig per --t-in value (a sweep writes one tNNN/ each)."""
    from cdc_aug.sampling import t_tag

    t_list = settings.t_in if isinstance(settings.t_in, list) else [settings.t_in]
    t_list = t_list if settings.mode == "ilvr" else [0.0]
    configs = []
    for t in t_list:
        out = Path(settings.out_dir) if settings.out_dir else None
        if out is not None and len(t_list) > 1:
            out = out / t_tag(t)
        configs.append(replace(settings, t_in=float(t), out_dir=str(out) if out is not None else None))
    return configs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, nproc: int, port: int, configs) -> None:
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    from cdc_aug.generate import run_generate_all

    run_generate_all(configs)


def run(settings) -> int:
    from cdc_aug.generate import check_config, run_generate_all

    configs = make_configs(settings)
    for cfg in configs:
        check_config(cfg)
    nproc = settings.nproc
    # Processes start (and load the model) once for every --t-in value of a sweep.
    if nproc == 1:
        indexes = run_generate_all(configs)
    else:
        import torch.multiprocessing as mp

        from cdc_aug.shards import read_index

        for cfg in configs:
            if cfg.threads is None:
                cfg.threads = max(1, (os.cpu_count() or 1) // nproc)
        mp.start_processes(_spawned, args=(nproc, _free_port(), configs), nprocs=nproc,
                           start_method="spawn", join=True)
        indexes = [read_index(cfg.out_dir) for cfg in configs]
    for cfg, index in zip(configs, indexes):
        if index is not None:
            from cdc_aug.shards import read_failures

            nfail = len(read_failures(cfg.out_dir))
            print(f"{cfg.out_dir}: {index['num_samples']} samples in {len(index['shards'])} shards, "
                  f"{nfail} failures recorded")
    return 0
