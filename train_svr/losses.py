"""D2IM-Net's three losses: MSE of the coarse SDF, L1 of the final SDF (targets x
``sdf_scale``), and the Laplacian loss of the front displacement map against the one the
view's normal map implies (train_svr.geometry.normal_laplacian_target)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import laplacian, normal_laplacian_target


def svr_losses(out: dict, batch: dict, sdf_scale: float = 10.0, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
               ) -> dict[str, torch.Tensor]:
    target = batch["sdf"].float() * sdf_scale
    coarse = F.mse_loss(out["coarse"].float(), target)
    final = F.l1_loss(out["final"].float(), target)
    front = out["maps"][:, :1].float() / sdf_scale
    lap_target, valid = normal_laplacian_target(batch["normal"].float(), batch["depth"].float(), batch["K"].float(),
                                                batch["mask"].float())
    valid = valid & (batch["has_detail"].view(-1, 1, 1, 1) > 0)
    lap = ((laplacian(front) - lap_target).abs() * valid).sum() / valid.sum().clamp(min=1)
    total = weights[0] * coarse + weights[1] * final + weights[2] * lap
    return {"loss": total, "coarse": coarse, "final": final, "laplacian": lap}
