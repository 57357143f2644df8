"""A camera estimator (DISN's and D2IM-Net's CamNet, small): image -> the view's camera,
for images that come without one (photo folders; Pix3D with ``--camera predicted``).

Network: train_svr.resnet's ResNet-18 (the SVR model's encoder) on the image, an MLP
on its 1000-d output giving a rotation in the continuous 6-D form of Zhou et al. (CVPR
2019: two columns, Gram-Schmidt) and the translation, both world (unit cube) -> OpenCV
camera as camera.json's ``RT``. Intrinsics are not predicted: renders share one focal
length (35 mm / 32 mm sensor), so a predicted camera takes the training views' mean
``K`` (kept in the checkpoint), rescaled to the image.

Loss (DISN's camera loss plus a rotation term): the mean squared distance between the
batch's SDF sample points moved by the predicted and by the true ``RT``, plus
``rotation_weight`` x the squared Frobenius distance of the rotations. Reported: the
geodesic rotation error in degrees and the translation error (unit-cube units).

Data: train_svr.datamodule.SVRDataModule (render sets and generate runs, mixed by
weight), whose batches carry image, K, RT and points. ``cdc-aug train-camera`` is
LightningCLI over these two classes, with `cdc-aug train`'s run layout and flags.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .resnet import ResNet18


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """(B, 6) -> (B, 3, 3) rotation matrices whose first two columns follow x[:, :3], x[:, 3:]."""
    a1, a2 = x[:, :3], x[:, 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def rotation_error_deg(Ra, Rb):
    """Geodesic angle between rotations (torch (B, 3, 3) or numpy (3, 3) / (B, 3, 3)), degrees."""
    if isinstance(Ra, torch.Tensor):
        tr = (Ra.transpose(-1, -2) @ Rb).diagonal(dim1=-2, dim2=-1).sum(-1)
        return torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1.0, 1.0)))
    tr = np.trace(np.swapaxes(np.asarray(Ra), -1, -2) @ np.asarray(Rb), axis1=-2, axis2=-1)
    return np.degrees(np.arccos(np.clip((tr - 1) / 2, -1.0, 1.0)))


def mean_rotation(Rs: np.ndarray) -> np.ndarray:
    """The chordal L2 mean of (N, 3, 3) rotations: their average projected onto SO(3)."""
    U, _, Vt = np.linalg.svd(np.asarray(Rs, dtype=np.float64).mean(axis=0))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


class CameraNet(nn.Module):
    def __init__(self, encoder_width: int = 64, hidden: int = 256):
        super().__init__()
        self.encoder = ResNet18(encoder_width)
        self.head = nn.Sequential(nn.Linear(1000, hidden), nn.LeakyReLU(0.02), nn.Linear(hidden, 9))
        with torch.no_grad():  # start at the identity rotation, 2 units in front of the camera
            self.head[-1].weight.mul_(0.01)
            self.head[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0, 2.0]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 3, 4) world -> camera RT."""
        _, logits = self.encoder(image)
        out = self.head(logits)
        R = rotation_from_6d(out[:, :6].float())
        return torch.cat([R, out[:, 6:9, None].float()], dim=-1)


class CameraModule(L.LightningModule):
    """The camera estimator.

    Args:
        lr: Adam learning rate.
        image_size: input resolution (linked to ``data.image_size``).
        encoder_width: ResNet-18 base width (64 = torchvision's).
        hidden: width of the MLP head.
        rotation_weight: weight of the rotation term of the loss.
    """

    def __init__(self, lr: float = 1e-4, image_size: int = 224, encoder_width: int = 64, hidden: int = 256,
                 rotation_weight: float = 1.0):
        super().__init__()
        self.save_hyperparameters()
        self.net = CameraNet(encoder_width, hidden)
        # the training views' mean K at image_size (set from the first batch; saved in checkpoints)
        self.register_buffer("mean_K", torch.zeros(3, 3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def _step(self, batch) -> dict[str, torch.Tensor]:
        RT = self.net(batch["image"])
        gt = batch["RT"].float()
        pts = batch["points"].float()
        moved = pts @ RT[:, :, :3].transpose(1, 2) + RT[:, None, :, 3]
        target = pts @ gt[:, :, :3].transpose(1, 2) + gt[:, None, :, 3]
        point = ((moved - target) ** 2).sum(-1).mean()
        rot = ((RT[:, :, :3] - gt[:, :, :3]) ** 2).sum((-1, -2)).mean()
        return {"loss": point + self.hparams.rotation_weight * rot, "point": point,
                "rot_err_deg": rotation_error_deg(RT[:, :, :3], gt[:, :, :3]).mean(),
                "trans_err": (RT[:, :, 3] - gt[:, :, 3]).norm(dim=-1).mean()}

    def training_step(self, batch, batch_idx):
        if not bool(self.mean_K.any()):
            self.mean_K.copy_(batch["K"].float().mean(0))
        out = self._step(batch)
        bs = batch["image"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log("train/rot_err_deg", out["rot_err_deg"], prog_bar=True, batch_size=bs)
        self.log("train/trans_err", out["trans_err"], batch_size=bs)
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        out = self._step(batch)
        bs = batch["image"].shape[0]
        for k in ("loss", "rot_err_deg", "trans_err"):
            self.log(f"val/{k}", out[k], batch_size=bs, sync_dist=True, prog_bar=k == "rot_err_deg")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    @torch.no_grad()
    def predict_camera(self, image: np.ndarray) -> dict:
        """A camera.json-style dict (``K``, ``RT``, ``image_size``, ``predicted``) for an
        HxWx3 uint8 image."""
        from .data import image_tensor
        from .geometry import resize_intrinsics

        if not bool(self.mean_K.any()):
            raise ValueError("camera estimator: no mean K in this checkpoint (it was never trained)")
        size = int(self.hparams.image_size)
        was_training = self.training
        self.eval()
        try:
            x = image_tensor(np.asarray(image), size)[None].to(self.mean_K.device)
            RT = self.net(x)[0].double().cpu().numpy()
        finally:
            self.train(was_training)
        K = resize_intrinsics(self.mean_K.double().cpu().numpy(), (size, size), image.shape[:2])
        return {"K": K.tolist(), "RT": RT.tolist(), "image_size": [int(image.shape[0]), int(image.shape[1])],
                "predicted": True}


def load_estimator(ckpt_path, device: str = "cpu") -> CameraModule:
    """A ``CameraModule`` from a `cdc-aug train-camera` checkpoint, in eval mode."""
    from pathlib import Path

    from cdc_aug.errors import UserError

    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"--camera-ckpt: {path} does not exist")
    try:
        model = CameraModule.load_from_checkpoint(path, map_location=device)
    except (KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"--camera-ckpt: {path} is not a `cdc-aug train-camera` checkpoint "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not bool(model.mean_K.any()):
        raise UserError(f"--camera-ckpt: {path} holds an untrained estimator (no training step recorded)")
    return model.eval().to(device)


def camera_errors(pred: dict, true: dict) -> dict:
    """Rotation error (degrees) and translation error (unit cube) of a predicted camera."""
    Rp, Rt = np.asarray(pred["RT"])[:, :3], np.asarray(true["RT"])[:, :3]
    tp, tt = np.asarray(pred["RT"])[:, 3], np.asarray(true["RT"])[:, 3]
    return {"rot_err_deg": float(rotation_error_deg(Rp, Rt)), "trans_err": float(np.linalg.norm(tp - tt))}


def main(argv: list[str]) -> int:
    """``cdc-aug train-camera``: `cdc-aug train`'s LightningCLI with this module."""
    from .cli import main as train_main

    return train_main(argv, module=CameraModule, prog="cdc-aug train-camera")
