"""The LightningModule: training on the three losses, validation by SDF losses and the
Chamfer-L1 of meshes reconstructed at a low grid resolution."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from .losses import svr_losses
from .metrics import chamfer_l1
from .model import D2IMNet
from .resnet import load_torchvision_weights


class SVRModule(L.LightningModule):
    """D2IM-Net-style single-view reconstruction.

    Args:
        lr: Adam learning rate (D2IM-Net: 5e-5).
        image_size: input resolution (linked to ``data.image_size``).
        encoder_width: ResNet-18 base width (64 = torchvision's).
        latent_dim: global feature size fed to the coarse decoder.
        decoder_width: coarse decoder base width (64 gives 512-256-128-64-32-32).
        detail_channels: FPN channels of the detail decoder.
        encoder_weights: a local torchvision resnet18 .pth to start the encoder from.
        sdf_scale: SDF targets are multiplied by this.
        coarse_weight: weight of the coarse SDF loss (MSE).
        final_weight: weight of the final SDF loss (L1).
        laplacian_weight: weight of the Laplacian detail loss.
        val_resolution: grid resolution of validation reconstructions.
        val_chunk: points per SDF evaluation chunk in validation.
    """

    def __init__(self, lr: float = 5e-5, image_size: int = 224, encoder_width: int = 64, latent_dim: int = 128,
                 decoder_width: int = 64, detail_channels: int = 64, encoder_weights: str | None = None,
                 sdf_scale: float = 10.0, coarse_weight: float = 1.0, final_weight: float = 1.0,
                 laplacian_weight: float = 1.0, val_resolution: int = 32, val_chunk: int = 32768):
        super().__init__()
        self.save_hyperparameters()
        self.net = D2IMNet(encoder_width, latent_dim, decoder_width, detail_channels)
        if encoder_weights:
            load_torchvision_weights(self.net.encoder, encoder_weights)

    def forward(self, image, points, K, RT):
        return self.net(image, points, K, RT)

    def _losses(self, batch):
        out = self.net(batch["image"], batch["points"], batch["K"], batch["RT"])
        h = self.hparams
        return svr_losses(out, batch, h.sdf_scale, (h.coarse_weight, h.final_weight, h.laplacian_weight))

    def training_step(self, batch, batch_idx):
        losses = self._losses(batch)
        bs = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        for k in ("coarse", "final", "laplacian"):
            self.log(f"train/{k}", losses[k], batch_size=bs)
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        from .inference import mesh_from_batch

        losses = self._losses(batch)
        bs = batch["image"].shape[0]
        self.log("val/loss", losses["loss"], batch_size=bs, sync_dist=True)
        self.log("val/final", losses["final"], batch_size=bs, sync_dist=True)
        if "surface" in batch:
            cds = []
            for i in range(bs):
                mesh = mesh_from_batch(self, {k: v[i:i + 1] for k, v in batch.items() if torch.is_tensor(v)},
                                       self.hparams.val_resolution, self.hparams.val_chunk)
                cds.append(chamfer_l1(mesh, batch["surface"][i].cpu().numpy(), n=batch["surface"].shape[1]))
                if batch_idx == 0 and i == 0 and self.trainer.is_global_zero and not self.trainer.sanity_checking:
                    self._log_reconstruction(batch["image"][0], mesh, batch["K"][0], batch["RT"][0])
            self.log("val/chamfer_l1", float(np.mean(cds)), batch_size=bs, sync_dist=True, prog_bar=True)

    def _log_reconstruction(self, image: torch.Tensor, mesh, K: torch.Tensor, RT: torch.Tensor) -> None:
        """The first validation input beside the depth of its reconstruction, to the loggers."""
        from diffusers.utils import make_image_grid
        from PIL import Image

        from cdc_aug.imagelog import log_image

        from .data import IMAGENET_MEAN, IMAGENET_STD
        from .geometry import depth_image

        size = image.shape[-1]
        rgb = (image.float().cpu().permute(1, 2, 0).numpy() * IMAGENET_STD + IMAGENET_MEAN).clip(0, 1)
        shade = np.zeros((size, size), np.uint8)  # black: no surface (an empty reconstruction)
        if len(mesh.faces):
            points = torch.from_numpy(np.asarray(mesh.sample(20000, seed=0), dtype=np.float32))
            depth = depth_image(points, K.float().cpu(), RT.float().cpu(), size).numpy()
            hit = np.isfinite(depth)
            if hit.any():
                near, far = depth[hit].min(), depth[hit].max()
                shade[hit] = (255 - 191 * (depth[hit] - near) / max(far - near, 1e-6)).astype(np.uint8)
        tiles = [Image.fromarray((rgb * 255).round().astype(np.uint8)), Image.fromarray(shade).convert("RGB")]
        log_image(self.loggers, "val/input_and_reconstruction_depth", make_image_grid(tiles, 1, 2), self.global_step)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
