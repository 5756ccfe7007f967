"""PNG previews of heatmap volumes: a strip of evenly spaced frames, body parts coloured as in PoseConv3D.

Channels are grouped into head (green), arms (orange), torso (violet) and legs (blue); each group is the
per-pixel maximum of its channels, and the groups are composited by per-colour maximum on black, so
overlapping parts stay visible instead of adding up to white.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import write_bytes
from stores.arrays import sample_name
from stores.coco import LIMBS, NUM_KEYPOINTS
from stores.volumes import VolumeStore

__all__ = ["GROUP_RGB", "JOINT_GROUPS", "LIMB_GROUPS", "save_preview", "write_previews"]

GROUP_RGB: dict[str, tuple[int, int, int]] = {
    "head": (40, 200, 60),
    "arms": (255, 150, 30),
    "torso": (160, 90, 235),
    "legs": (50, 130, 255),
}
_HEAD, _ARMS, _LEGS = {0, 1, 2, 3, 4}, {7, 8, 9, 10}, {13, 14, 15, 16}  # the rest (shoulders, hips): torso


def _joint_group(k: int) -> str:
    return "head" if k in _HEAD else "arms" if k in _ARMS else "legs" if k in _LEGS else "torso"


def _limb_group(a: int, b: int) -> str:
    """Head if both ends are on the head, arms/legs if either end is an elbow/wrist/knee/ankle, else torso."""
    if a in _HEAD and b in _HEAD:
        return "head"
    if {a, b} & _ARMS:
        return "arms"
    return "legs" if {a, b} & _LEGS else "torso"


JOINT_GROUPS: tuple[str, ...] = tuple(_joint_group(k) for k in range(NUM_KEYPOINTS))
LIMB_GROUPS: tuple[str, ...] = tuple(_limb_group(a, b) for a, b in LIMBS)

ZOOM = 3  # each volume pixel becomes ZOOM x ZOOM screen pixels
GAP = 2  # separator between frames (px)
TITLE_HEIGHT = 22  # band above the strip when a title is given (px)
_GAP_RGB = (60, 60, 60)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _composite(volume: np.ndarray, groups: tuple[str, ...]) -> np.ndarray:
    """[K, n, H, W] intensities in [0, 1] -> [n, H, W, 3] float RGB (max per colour over the groups)."""
    rgb = np.zeros((*volume.shape[1:], 3), np.float32)
    for group, colour in GROUP_RGB.items():
        channels = [k for k, g in enumerate(groups) if g == group]
        if channels:
            part = np.clip(volume[channels].max(axis=0), 0.0, 1.0)
            rgb = np.maximum(rgb, part[..., None] * np.asarray(colour, np.float32))
    return rgb


def save_preview(
    volume: np.ndarray, kind: str, path: Path, *, frames: int = 8, title: str | None = None
) -> Path:
    """Write a PNG strip of `frames` evenly spaced frames of a [K, T, H, W] volume; return `path`.

    `kind` is 'joint' (K = 17, COCO order) or 'limb' (K = len(stores.coco.LIMBS)). Float volumes are
    read as intensities in [0, 1], integer ones as value / 255 (the uint8 storage option). The image is
    (H·ZOOM [+ TITLE_HEIGHT]) x (n·W·ZOOM + (n-1)·GAP) pixels with n = min(frames, T); each frame is
    labelled with its index. Written atomically.
    """
    groups = {"joint": JOINT_GROUPS, "limb": LIMB_GROUPS}.get(kind)
    if groups is None:
        raise ValueError(f"kind must be 'joint' or 'limb', got {kind!r}")
    volume = np.asarray(volume)
    if volume.ndim != 4 or volume.shape[0] != len(groups) or 0 in volume.shape[1:]:
        raise ValueError(f"{kind} volume must be [{len(groups)}, T, H, W] with T, H, W > 0, got {volume.shape}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    _, t, h, w = volume.shape
    index = np.linspace(0, t - 1, min(frames, t)).round().astype(int)
    picked = volume[:, index].astype(np.float32)
    if np.issubdtype(volume.dtype, np.integer):
        picked /= 255.0
    tiles = np.rint(_composite(picked, groups)).astype(np.uint8)

    n = len(index)
    strip = np.empty((h * ZOOM, n * w * ZOOM + (n - 1) * GAP, 3), np.uint8)
    strip[:] = _GAP_RGB
    for i, (frame, tile) in enumerate(zip(index, tiles, strict=True)):
        x0 = i * (w * ZOOM + GAP)
        big = cv2.resize(tile, (w * ZOOM, h * ZOOM), interpolation=cv2.INTER_NEAREST)
        cv2.putText(big, f"t={frame}", (3, 12), _FONT, 0.35, (150, 150, 150), 1, cv2.LINE_AA)
        strip[:, x0 : x0 + w * ZOOM] = big
    if title is not None:
        band = np.zeros((TITLE_HEIGHT, strip.shape[1], 3), np.uint8)
        cv2.putText(band, title, (4, TITLE_HEIGHT - 7), _FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        strip = np.vstack([band, strip])

    ok, png = cv2.imencode(".png", np.ascontiguousarray(strip[..., ::-1]))  # RGB -> BGR for OpenCV
    if not ok:
        raise RuntimeError(f"{path}: PNG encoding failed")
    path = Path(path)
    write_bytes(path, png.tobytes())
    return path


def write_previews(out: Path, n: int) -> list[Path]:
    """PNG strips of ``n`` samples spread over a render output, in ``out/previews/``."""
    store = VolumeStore(out)
    rows = store.index.to_pylist()
    picks = sorted({int(i) for i in np.linspace(0, len(rows) - 1, n)}) if rows and n > 0 else []
    paths = []
    for row in (rows[i] for i in picks):
        title = f"{row['sample_id']} label={row['label']}"
        path = out / "previews" / f"{sample_name(row['sample_id'])}.png"
        paths.append(save_preview(store.read(row["sample_id"]), store.attrs["kind"], path, title=title))
    return paths
