"""Seeded, stratified selections of a labelled set: subsets of a given size and a carved validation split.

Both keep every class in proportion (largest-remainder rounding) and depend only on the labels' order and
the seed, so the same training split always gives the same selection on any machine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CARVE_SEED = 0  # the validation split is the same for every training seed: runs differ only in what they vary


def _by_class(labels: Sequence[int], seed: int) -> list[np.ndarray]:
    """Each class's positions in a seeded random order (classes in ascending label order)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]


def _quota(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over the classes in proportion to ``counts`` (largest remainder, ties by class)."""
    exact = counts * total / counts.sum()
    quota = np.floor(exact).astype(int)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: total - quota.sum()]] += 1
    return quota


def stratified_subset(labels: Sequence[int], n: int, seed: int) -> np.ndarray:
    """Sorted positions of ``n`` items with the classes in proportion (all items when n >= len(labels))."""
    if n >= len(labels):
        return np.arange(len(labels))
    groups = _by_class(labels, seed)
    quota = _quota(np.array([len(g) for g in groups]), n)
    return np.sort(np.concatenate([g[:q] for g, q in zip(groups, quota, strict=True)]))


def per_class_subset(labels: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Sorted positions of ``k`` seeded-random items of every class (all of a class that has fewer)."""
    return np.sort(np.concatenate([g[:k] for g in _by_class(labels, seed)]))


def carve(labels: Sequence[int], fraction: float, seed: int = CARVE_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) sorted positions: about ``fraction`` of each class goes to val, at least one clip of every
    class that has two or more, and never a class's last clip (every class stays trainable)."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    train, val = [], []
    for g in _by_class(labels, seed):
        k = min(max(round(fraction * len(g)), 1), len(g) - 1) if len(g) > 1 else 0
        val.append(g[:k])
        train.append(g[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
