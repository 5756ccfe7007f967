"""Which labelled samples of a render output a split names (torch-free: the stages check a split before their
output exists). An empty or missing split name means every labelled sample, in train and test alike."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.errors import SkelError
from stores.triplets import split_names
from stores.volumes import VolumeStore

log = logging.getLogger("skel")


@dataclass(frozen=True)
class Item:
    """One sample of the index: which volume and what it is."""

    sample_id: str
    label: int
    n_frames: int


def split_label(split: str | None) -> str:
    """The split as messages name it ('' and None: every labelled sample)."""
    return split or "every labelled sample"


def split_items(store: VolumeStore, split: str | None, option: str = "") -> list[Item]:
    """Samples whose comma-separated split column contains ``split`` (every labelled sample when ''/None).
    None found is an error naming the splits there are and, given the ``option`` that named the split, what
    to pass instead (folder-per-class videos have no splits)."""
    items = []
    for row in store.rows.values():
        if row["label"] is not None and (not split or split in split_names(row["split"])):
            items.append(Item(row["sample_id"], int(row["label"]), int(row["n_frames"])))
    if not items:
        if not split:
            raise SkelError(f"{store.path}: no labelled samples")
        raise SkelError(f"{store.path}: no labelled samples in split {split!r} (labelled splits: "
                        f"{', '.join(sorted(labelled_splits(store))) or 'none'}){_instead(option)}")
    return items


def warn_unlabelled(store: VolumeStore, split: str | None, left: str) -> None:
    """Say how many samples of a named split have no label (``left``: what that costs them): a pickle or labels
    CSV may leave some unlabelled, and the split would be smaller without a word."""
    if not split:
        return
    named = [row for row in store.rows.values() if split in split_names(row["split"])]
    if n := sum(row["label"] is None for row in named):
        log.warning("%s: %d of the %d samples of split %r have no label: %s", store.path, n, len(named), split, left)


def warn_untrained(store: VolumeStore, trained: set[int]) -> None:
    """Say which classes have labelled samples but none among the ``trained`` labels (a class only in the test split):
    the model would score them without ever having learnt them, without a word."""
    if untrained := sorted({int(r["label"]) for r in store.rows.values() if r["label"] is not None} - trained):
        names = store.attrs.get("classes") or []
        said = ", ".join(str(names[c]) if c < len(names) else str(c) for c in untrained[:5])
        log.warning("%s: %d class(es) have labelled samples but none in the training split (%s%s): the model never "
                    "learns them", store.path, len(untrained), said, ", ..." if len(untrained) > 5 else "")


def labelled_splits(store: VolumeStore) -> set[str]:
    """The split names the labelled samples of ``store`` hold."""
    return {name for row in store.rows.values() if row["label"] is not None for name in split_names(row["split"])}


def _instead(option: str) -> str:
    """What to pass instead of a split that is not there, given the option that named it."""
    if not option:
        return ""
    if option == "--val-split":  # '' there carves --val-fraction from the training split
        return f"; leave {option} out to carve --val-fraction of the training split for validation"
    return (f"; pass {option} '' for every labelled sample, or give the samples splits (a split column in the "
            "CSV of `skel extract --labels`, the 'split' lists of a pickle)")
