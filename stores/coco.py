"""COCO-17 keypoint layout, pyskl's limb list and the left/right permutations used for flipping."""

from __future__ import annotations

KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
NUM_KEYPOINTS = len(KEYPOINTS)

LEFT_KP: tuple[int, ...] = (1, 3, 5, 7, 9, 11, 13, 15)
RIGHT_KP: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 14, 16)

# pyskl's default COCO limbs (GeneratePoseTarget.skeletons), in pyskl's order.
LIMBS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (0, 5), (5, 7), (7, 9), (0, 6), (6, 8),
    (8, 10), (5, 11), (11, 13), (13, 15), (6, 12), (12, 14), (14, 16), (11, 12),
)  # fmt: skip
LEFT_LIMB: tuple[int, ...] = (0, 2, 4, 5, 6, 10, 11, 12)
RIGHT_LIMB: tuple[int, ...] = (1, 3, 7, 8, 9, 13, 14, 15)


def swap_permutation(n: int, left: tuple[int, ...], right: tuple[int, ...]) -> list[int]:
    """Channel permutation that exchanges each left index with its right twin (for horizontal flips)."""
    perm = list(range(n))
    for a, b in zip(left, right, strict=True):
        perm[a], perm[b] = b, a
    return perm


KP_FLIP = swap_permutation(NUM_KEYPOINTS, LEFT_KP, RIGHT_KP)
LIMB_FLIP = swap_permutation(len(LIMBS), LEFT_LIMB, RIGHT_LIMB)

# COCO's per-keypoint OKS sigmas (cocoapi), in KEYPOINTS order: how far a joint may be off for its type.
OKS_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
