"""Which videos to extract, with their sample ids, labels and splits.

Inputs are video files, folders (searched recursively for video extensions) or glob patterns. A sample
id is the video's path relative to its input root (folder, glob prefix, or the file's own folder), without
extension. Labels come from a CSV (``video,label[,split]``) when given: a video is named by its sample
id or by any trailing part of its path, with or without extension, and labels are integers or class
names. Otherwise a folder-per-class layout ``root/<class>/<video>`` gives them; class names are sorted and
numbered from 0.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import SkelError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"}


@dataclass(frozen=True)
class Video:
    """One video to extract (small and picklable: it is a shard's payload)."""

    sample_id: str
    path: str
    label: int | None = None
    split: str | None = None


def _expand(source: str) -> list[tuple[Path, Path]]:
    """(root, file) pairs of one input: a file, a folder or a glob pattern."""
    path = Path(source)
    if glob.has_magic(source):
        first_magic = next(i for i, part in enumerate(path.parts) if glob.has_magic(part))
        root = Path(*path.parts[:first_magic]) if first_magic else Path(".")
        found = [Path(p) for p in sorted(glob.glob(source, recursive=True)) if os.path.isfile(p)]
        return [(root, f) for f in found]
    if path.is_dir():
        return [(path, f) for f in sorted(path.rglob("*")) if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS]
    if path.is_file():
        return [(path.parent, path)]
    raise SkelError(f"{source}: no such file or folder")


def _path_keys(file: Path) -> list[str]:
    """The ways a label file may name a video: any trailing part of its path, with or without extension."""
    parts = file.parts
    tails = [Path(*parts[i:]) for i in range(len(parts) - 1, -1, -1)]
    return [k for t in tails for k in (t.as_posix(), t.with_suffix("").as_posix())]


def _read_labels(path: str) -> dict[str, tuple[str, str | None]]:
    """video key → (label text, split) from a CSV with an optional ``video,label[,split]`` header."""
    rows: dict[str, tuple[str, str | None]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.reader(fh)):
                if not row or (n == 0 and row[0].strip().lower() == "video"):
                    continue
                if len(row) < 2:
                    raise SkelError(f"{path}:{n + 1}: expected video,label[,split], got {row!r}")
                split = row[2].strip() if len(row) > 2 and row[2].strip() else None
                rows[row[0].strip()] = (row[1].strip(), split)
    except UnicodeDecodeError as exc:
        raise SkelError(f"{path}: not a UTF-8 text file (byte {exc.start}): expected a CSV of video,label[,split]"
                        ) from None
    return rows


def _number(names: list[str | None]) -> tuple[list[int | None], list[str] | None]:
    """Labels as integers: integer texts as they are, class names numbered in sorted order."""
    given = [n for n in names if n is not None]
    if all(n.lstrip("-").isdigit() for n in given):
        return [None if n is None else int(n) for n in names], None
    classes = sorted(set(given))
    index = {c: i for i, c in enumerate(classes)}
    return [None if n is None else index[n] for n in names], classes


def discover(sources: tuple[str, ...], labels: str | None = None) -> tuple[list[Video], list[str] | None, list[dict]]:
    """Videos sorted by sample id, class names (None for integer labels) and error rows for duplicates."""
    found: dict[str, tuple[Path, str | None]] = {}  # sample id → (file, class folder)
    errors = []
    for source in sources:
        for root, file in _expand(source):
            rel = file.relative_to(root)
            sid = rel.with_suffix("").as_posix()
            if sid not in found:
                found[sid] = (file, rel.parts[0] if len(rel.parts) == 2 else None)
            elif found[sid][0].resolve() != file.resolve():
                errors.append({"sample_id": sid, "source": str(file), "message": f"duplicate sample id {sid!r}"})
    if not found:
        raise SkelError(f"no videos found in {', '.join(sources) or '(no inputs)'}")
    ids = sorted(found)
    splits: list[str | None] = [None] * len(ids)
    if labels:
        table = _read_labels(labels)
        texts: list[str | None] = []
        for i, sid in enumerate(ids):
            keys = [sid, *_path_keys(found[sid][0]), *_path_keys(found[sid][0].resolve())]
            hit = next((table[k] for k in keys if k in table), None)
            texts.append(hit[0] if hit else None)
            splits[i] = hit[1] if hit else None
    else:
        texts = [found[sid][1] for sid in ids]
    numbers, classes = _number(texts)
    videos = [Video(sid, str(found[sid][0]), num, split) for sid, num, split in zip(ids, numbers, splits, strict=True)]
    return videos, classes, errors
