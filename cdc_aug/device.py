"""``--device`` and ``--dtype``: "auto" resolved in one place for every stage."""

from __future__ import annotations

from .errors import UserError


def resolve_device(name: str = "auto", local_rank: int = 0):
    """``auto``: CUDA when present (the local rank's GPU), else CPU; ``cpu``, ``cuda``, ``cuda:N``."""
    import torch

    name = str(name or "auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: write auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return device


def resolve_dtype(name: str, device):
    """``auto``: the model loader's choice for ``device`` (fp16 on CUDA, fp32 on CPU)."""
    import torch

    if name == "auto":
        from .models import default_dtype

        return default_dtype(device)
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise UserError(f"--dtype {name}: choose auto, fp32, fp16 or bf16")
    return table[name]
