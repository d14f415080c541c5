"""A procedural torso CT phantom with plausible HU and its label map (no scans needed)."""

from __future__ import annotations

import numpy as np
import torch

from .volume import Volume

__all__ = ["PHANTOM_LABELS", "make_phantom"]

#: Label id -> structure name of `make_phantom`'s label map (0 = background/unlabelled).
PHANTOM_LABELS: dict[int, str] = {
    0: "background",
    1: "subcutaneous_fat",
    2: "muscle",
    3: "lungs",
    4: "spine",
    5: "ribs",
    6: "liver",
    7: "kidneys",
    8: "aorta",
}

# Mean HU per label (literature values; aorta with arterial contrast).
_HU = {1: -100.0, 2: 50.0, 3: -850.0, 4: 450.0, 5: 700.0, 6: 60.0, 7: 30.0, 8: 180.0}


def make_phantom(
    shape: tuple[int, int, int] = (64, 128, 128),
    spacing: tuple[float, float, float] | None = None,
    seed: int = 0,
    noise_std: float = 10.0,
) -> tuple[Volume, Volume]:
    """Build a torso phantom in the canonical orientation and its label map.

    Anatomy (ellipses/ellipsoids in mm, scaled to a 300 x 210 mm body): body outline with
    subcutaneous fat (-100 HU) and a muscle wall (50 HU), soft tissue inside (20 HU), lungs
    (-850 HU) in the upper 45 % of the scan, liver (60 HU) on the patient's right, kidneys
    (30 HU) posteriorly, aorta (180 HU, contrast) left-anterior of the spine, vertebral
    bodies (450 HU) with discs (80 HU) every 30 mm and ribs (700 HU) around the thorax; air
    -1000 HU outside; Gaussian noise ``noise_std``. D runs inferior -> superior, H anterior
    -> posterior, W right -> left (so the liver sits at small W).

    Args:
        shape: ``(D, H, W)`` voxels.
        spacing: ``(sd, sh, sw)`` mm; default ``(320/D, 400/H, 400/W)``: a 320 mm long,
            400 mm field of view (e.g. 300 x 512 x 512 gives 1.07 x 0.78 x 0.78 mm).
        seed: Seed of the noise.
        noise_std: Noise standard deviation in HU (0 for none).

    Returns:
        ``(image, labels)``: `Volume` ``(1, D, H, W)`` float32 HU and `Volume`
        ``(1, D, H, W)`` uint8 class ids (`PHANTOM_LABELS`), same affine.

    Raises:
        ValueError: non-positive shape or spacing.
    """
    d, h, w = (int(s) for s in shape)
    if min(d, h, w) < 1:
        raise ValueError(f"shape must be positive (D, H, W), got {shape}")
    if spacing is None:
        spacing = (320.0 / d, 400.0 / h, 400.0 / w)
    sd, sh, sw = (float(s) for s in spacing)
    if min(sd, sh, sw) <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    z = (torch.arange(d, dtype=torch.float32) + 0.5) * sd  # mm from the inferior edge
    length = d * sd
    zf = z / length  # 0 inferior .. 1 superior
    y = (torch.arange(h, dtype=torch.float32) - (h - 1) / 2) * sh  # anterior -> posterior
    x = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2) * sw  # right -> left
    yy, xx = y[:, None], x[None, :]

    def ellipse(cx: float, cy: float, ax: float, ay: float) -> torch.Tensor:
        return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2  # (H, W)

    # Tissue classes: 0-8 are the labels, 9 soft tissue inside the body, 10 discs.
    body = ellipse(0.0, 0.0, 150.0, 105.0)
    base = torch.zeros((h, w), dtype=torch.uint8)
    base[body <= 1.0] = 1
    base[body <= 0.88**2] = 2
    base[body <= 0.80**2] = 9
    # Ribs: a shell just inside the muscle wall, open anteriorly (costal cartilage omitted).
    shell = (body <= 0.80**2) & (body >= 0.74**2) & (yy > -60.0)
    spine = ellipse(0.0, 70.0, 20.0, 18.0) <= 1.0
    aorta = ellipse(18.0, 42.0, 12.0, 12.0) <= 1.0
    # (cx, cy, cz, ax, ay, az, class): ellipsoids in mm (cz, az as fractions of the length).
    organs = [
        (-62.0, 0.0, 0.80, 48.0, 68.0, 0.27, 3),
        (62.0, 0.0, 0.80, 48.0, 68.0, 0.27, 3),
        (-58.0, 48.0, 0.30, 24.0, 30.0, 0.09, 7),
        (58.0, 48.0, 0.30, 24.0, 30.0, 0.09, 7),
        (-55.0, -5.0, 0.48, 70.0, 62.0, 0.13, 6),
    ]
    organ_maps = [(ellipse(o[0], o[1], o[3], o[4]), o[2], o[5], o[6]) for o in organs]
    tissue = torch.empty((d, h, w), dtype=torch.uint8)
    for k in range(d):
        sl = base.clone()
        if zf[k] > 0.45 and (z[k] % 25.0) < 8.0:
            sl[shell] = 5
        for r2, cz, az, c in organ_maps:
            dz = float(((zf[k] - cz) / az) ** 2)
            if dz < 1.0:
                sl[r2 <= 1.0 - dz] = c
        sl[spine] = 4 if (z[k] % 30.0) < 24.0 else 10
        if zf[k] < 0.85:
            sl[aorta] = 8
        tissue[k] = sl
    lut = torch.tensor([-1000.0, *[_HU[i] for i in range(1, 9)], 20.0, 80.0])
    hu = lut[tissue.long()]
    labels = torch.where(tissue <= 8, tissue, torch.zeros_like(tissue))
    if noise_std > 0:
        g = torch.Generator().manual_seed(int(seed))
        hu += noise_std * torch.randn(hu.shape, generator=g)
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.0, sw], [0.0, sh, 0.0], [sd, 0.0, 0.0]]
    affine[:3, 3] = [float(x[0]), float(y[0]), 0.5 * sd]
    meta = {"modality": "CT", "format": "phantom"}
    image = Volume(
        data=hu[None], spacing=(sd, sh, sw), affine=affine, source="phantom", metadata=meta
    )
    label = Volume(
        data=labels[None],
        spacing=(sd, sh, sw),
        affine=affine.copy(),
        source="phantom",
        metadata=dict(meta),
    )
    return image, label
