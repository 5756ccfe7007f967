"""Which videos to extract, with their sample ids, labels and splits.

Inputs are video files, folders (searched recursively for video extensions, through linked folders too; hidden
files and folders, a leading '.', are passed over with a note: macOS leaves a ``._<name>`` companion beside each file
it copies) or glob patterns (a path that exists is never taken as a pattern). A link to a missing file is an error
row. A sample
id is the video's path relative to its input root (folder, glob prefix, or the file's own folder), without
extension; a video reached twice (a folder and a file in it, a link beside the video) is extracted once, under
its first id. Labels come from a CSV (``video,label[,split]``) when given: a video is named by its sample
id or by any trailing part of its path, with or without extension (as written, else in Unicode NFC: macOS tools
write NFD), and labels are integers or class
names. A name that fits several videos, a video named twice, a row without a label and labels mixing
integers and names are errors: each would label videos by a guess. Otherwise a folder-per-class layout
``root/<class>/<video>`` gives them; class names are sorted and numbered from 0.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import NOT_UTF8, SkelError, printable, utf8_name

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
                    ".3gp", ".3g2", ".mts", ".m2ts", ".mxf", ".ogv", ".asf", ".vob", ".dv", ".f4v", ".mjpeg", ".mjpg",
                    ".y4m"}  # phones (3gp), camcorders (AVCHD mts/m2ts); not .ts (TypeScript too): named, it extracts


@dataclass(frozen=True)
class Video:
    """One video to extract (small and picklable: it is a shard's payload)."""

    sample_id: str
    path: str
    label: int | None = None
    split: str | None = None


def _expand(source: str) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """(root, file) pairs of one input (a file, a folder or a glob pattern), the hidden video files a folder holds
    and its other files (not videos by their extension), both passed over. A path that exists is taken as it is,
    though it holds glob characters (``title [id].mp4``, as video downloaders name files); a pattern that matches no
    file is an error, not an input that silently adds nothing."""
    path = Path(source)
    if path.is_dir():
        videos, others = _files_under(path)
        hidden = {f for f in videos if _hidden(f, path)}
        return [(path, f) for f in videos if f not in hidden], sorted(hidden), others
    if path.is_file():
        return [(path.parent, path)], [], []
    if glob.has_magic(source):
        first_magic = next(i for i, part in enumerate(path.parts) if glob.has_magic(part))
        root = Path(*path.parts[:first_magic]) if first_magic else Path(".")
        found = [Path(p) for p in sorted(glob.glob(source, recursive=True)) if os.path.isfile(p)]
        if not found:
            raise SkelError(f"{source}: no file matches this pattern")
        return [(root, f) for f in found], [], []
    raise SkelError(f"{source}: no such file or folder")


def _files_under(folder: Path) -> tuple[list[Path], list[Path]]:
    """The video files anywhere under ``folder``, sorted, links to missing files included, and the other files not
    hidden (a video whose extension is not known would otherwise vanish unsaid); folders reached through symlinks
    too (a class folder linked in from elsewhere is a common layout), each real folder once, so a link to a folder
    above is no loop."""
    seen: set[str] = set()
    found, others = [], []
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        for name in files:
            file = Path(top, name)
            if file.suffix.lower() in VIDEO_EXTENSIONS:
                if file.is_file() or not file.exists():
                    found.append(file)
            elif not _hidden(file, folder):
                others.append(file)
    return sorted(found), sorted(others)


def _hidden(file: Path, root: Path) -> bool:
    """A leading '.' in the file's name or in a folder between it and ``root``."""
    return any(part.startswith(".") for part in file.relative_to(root).parts)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _path_keys(file: Path) -> list[str]:
    """The ways a label file may name a video: any trailing part of its path, with or without extension."""
    parts = file.parts
    tails = [Path(*parts[i:]) for i in range(len(parts) - 1, -1, -1)]
    return [k for t in tails for k in (t.as_posix(), t.with_suffix("").as_posix())]


@dataclass(frozen=True)
class Row:
    """One labelled video of a labels CSV: its line, how it names the video, its label text and split."""

    line: int
    video: str
    label: str
    split: str | None
    written: str = ""  # the video's cell as written, where stripping its spaces changed it (a name may hold them)


COLUMNS = ("video", "label", "split")
INTEGER = re.compile(r"-?[0-9]+")
MAX_LABEL = 2**31 - 1  # labels are stored as int32


def _read_labels(path: str) -> list[Row]:
    """The rows of a CSV of ``video,label[,split]``, or of any column order under a header naming them (other
    columns are ignored; an Excel BOM is allowed). Videos are named with / (``\\`` and a leading ``./`` are
    taken as that). Cells are stripped of spaces (`Row.written` keeps a video's cell where that changed it, for a
    name that holds them). A row without a video or label, or naming a video again, is an error."""
    lines: list[tuple[int, list[str]]] = []
    end = 0  # the last line read: a row starts on the line after the row before (a quoted cell may span lines)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for row in reader:
                if "".join(row).strip():
                    lines.append((end + 1, row))
                end = reader.line_num
    except UnicodeDecodeError as exc:
        raise SkelError(f"{path}: not a UTF-8 text file (byte {exc.start}): expected a CSV of video,label[,split]"
                        ) from None
    except csv.Error as exc:
        raise SkelError(f"{path}:{end + 1}: {exc} (a quote that is never closed?)") from None
    columns: tuple[int | None, ...] = (0, 1, 2)
    if lines and {c.strip().lower() for c in lines[0][1]} & set(COLUMNS):
        columns = _header(path, lines.pop(0))
    rows: list[Row] = []
    first: dict[str, int] = {}
    for n, written in lines:
        cells = [c.strip() for c in written]
        if len(cells) < 2:
            raise SkelError(f"{path}:{n}: expected video,label[,split], got {','.join(cells)!r}")
        cell, label, split = (written[i] if i is not None and i < len(written) else "" for i in columns)
        raw, video = (name.replace("\\", "/").removeprefix("./") for name in (cell, cell.strip()))
        label, split = label.strip(), split.strip()
        if not video or not label:
            raise SkelError(f"{path}:{n}: " + (f"no label for {video}" if video else "no video named"))
        if any("\n" in c or "\r" in c for c in (video, label, split)):
            raise SkelError(f"{path}:{n}: a cell spans several lines (a quote that is never closed?)")
        if bad := next((ch for c in (video, label, split) for ch in c if unicodedata.category(ch) == "Cc"), None):
            raise SkelError(f"{path}:{n}: a cell holds the control character {bad!r}: it would become part of "
                            "a name")
        if INTEGER.fullmatch(label) and not 0 <= int(label) <= MAX_LABEL:
            raise SkelError(f"{path}:{n}: label {label} is not a class index (0 to {MAX_LABEL})")
        if video in first:
            raise SkelError(f"{path}:{n}: {video} is listed again (first on line {first[video]})")
        first[video] = n
        rows.append(Row(n, video, label, split or None, raw if raw != video else ""))
    return rows


def _header(path: str, line: tuple[int, list[str]]) -> tuple[int | None, ...]:
    """Column positions of video, label and split from a header row (which may name other columns too)."""
    n, names = line[0], [c.strip().lower() for c in line[1]]
    if "video" not in names or "label" not in names:
        raise SkelError(f"{path}:{n}: a header names the columns video, label and (optionally) split, got "
                        f"{', '.join(names)}")
    return tuple(names.index(c) if c in names else None for c in COLUMNS)


def _number(names: list[str | None], source: str, lines: list[int | None] | None = None
            ) -> tuple[list[int | None], list[str] | None]:
    """Labels as integers: integer texts as they are, class names numbered in sorted order. ``lines``: each name's
    line in ``source``, for an error to point at."""
    names = [None if n is None else _nfc(n) for n in names]  # one class however its name's accents are encoded
    given = [(n, line) for n, line in zip(names, lines or [None] * len(names), strict=True) if n is not None]
    numbers = [(n, line) for n, line in given if INTEGER.fullmatch(n)]
    if len(numbers) == len(given):
        return [None if n is None else int(n) for n in names], None
    if numbers:
        word, at = next((n, line) for n, line in given if not INTEGER.fullmatch(n))
        where = f"{source}:{at}" if at else source
        other = f" on line {numbers[0][1]}" if numbers[0][1] else ""
        raise SkelError(f"{where}: labels mix integers and class names ({word!r} here, {numbers[0][0]!r}{other}): use "
                        "one or the other")
    classes = sorted({n for n, _ in given})
    index = {c: i for i, c in enumerate(classes)}
    return [None if n is None else index[n] for n in names], classes


def _keys(files: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Each name a row may give a video by (`_path_keys`), as written and in NFC -> the videos' keys in ``files``."""
    exact: dict[str, set[str]] = {}
    folded: dict[str, set[str]] = {}
    for sid, file in files.items():
        for key in dict.fromkeys([sid, *_path_keys(file), *_path_keys(file.resolve())]):
            exact.setdefault(key, set()).add(sid)
            folded.setdefault(_nfc(key), set()).add(sid)
    return exact, folded


def _match(table: list[Row], files: dict[str, Path], labels: str,
           skipped: dict[str, Path]) -> tuple[dict[str, Row], list[str]]:
    """Each video's row (sample id -> row) and notes on rows and videos left unmatched. A row names the videos one
    of whose names (`_path_keys`) it holds as written, else in Unicode NFC (macOS tools write NFD), so two files whose
    names differ only in form can still be told apart. A row naming several videos, or a video named by several rows,
    is an error: either would label a video by a guess. ``skipped``: the videos left out as duplicate sample ids
    (their source -> file), which a row naming one is told apart by."""
    exact, folded = _keys(files)
    hits: dict[str, Row] = {}
    unused = []
    for row in table:
        sids = sorted(exact.get(row.video) or folded.get(_nfc(row.video))
                      or exact.get(row.written) or folded.get(_nfc(row.written), set()))
        if len(sids) > 1:
            raise SkelError(f"{labels}:{row.line}: {row.video} names {len(sids)} videos ({', '.join(sids[:3])}"
                            f"{', ...' if len(sids) > 3 else ''}): name each by more of its path, e.g. {sids[0]}")
        if not sids:
            unused.append(row)
        elif (first := hits.setdefault(sids[0], row)) is not row:
            raise SkelError(f"{labels}: lines {first.line} and {row.line} both name {files[sids[0]]}")
    if not table:
        raise SkelError(f"{labels}: no rows of video,label[,split]")
    if not hits:
        raise SkelError(f"{labels} names none of the {len(files)} videos (line {table[0].line}: {table[0].video}; "
                        f"a video: {next(iter(files))})")
    notes = []
    gone, gone_folded = _keys(skipped)
    if duplicates := [row for row in unused if row.video in gone or _nfc(row.video) in gone_folded]:
        row = duplicates[0]
        notes.append(f"{labels}:{row.line}: {row.video} was left out, another video having its sample id (see the "
                     "error table): rename one of the two to extract both")
        unused = [row for row in unused if row not in duplicates]
    if unused:
        shown = repr(unused[0].written) if unused[0].written else unused[0].video  # its spaces seen
        notes.append(f"{labels}: {len(unused)} row(s) name no video found (line {unused[0].line}: {shown})")
    if missing := [sid for sid in files if sid not in hits]:
        notes.append(f"{len(missing)} of {len(files)} videos have no row in {labels} (e.g. {missing[0]}): extracted "
                     "unlabelled")
    return hits, notes


@dataclass(frozen=True)
class Found:
    """What the inputs hold: videos sorted by sample id, class names (None for integer labels), error rows
    for duplicates and notes for the user (videos left unlabelled, rows naming no video)."""

    videos: list[Video]
    classes: list[str] | None
    errors: list[dict]
    notes: list[str]


def discover(sources: tuple[str, ...], labels: str | None = None) -> Found:
    """The videos of ``sources`` with their labels (``labels``: a CSV; otherwise class folders)."""
    found: dict[str, tuple[Path, str | None]] = {}  # sample id → (file, class folder)
    taken: dict[Path, str] = {}  # real file → its sample id: a video reached twice is extracted once
    errors, again, hidden, others = [], [], [], []
    doubles: dict[str, Path] = {}  # videos left out for a sample id another has: their source -> file
    for source in sources:
        pairs, skipped, passed = _expand(source)
        hidden += skipped
        others += [f for f in passed if labels is None or f.resolve() != Path(labels).resolve()]
        for root, file in pairs:
            rel = file.relative_to(root)
            sid, real = rel.with_suffix("").as_posix(), file.resolve()
            if not utf8_name(file):
                errors.append({"sample_id": printable(sid), "source": printable(file), "message": NOT_UTF8})
            elif not file.exists():
                errors.append({"sample_id": sid, "source": str(file), "message": f"a link to {real}, which is missing"})
            elif (first := taken.get(real)) is not None:
                if first != sid:
                    again.append(f"{file} is given again (as {sid}): extracted once, as {first}")
            elif sid not in found:
                found[sid] = (file, rel.parts[0] if len(rel.parts) == 2 else None)
                taken[real] = sid
            else:
                errors.append({"sample_id": sid, "source": str(file),
                               "message": f"duplicate sample id {sid!r} (kept: {found[sid][0]})"})
                doubles[str(file)] = file
    if not found:
        why = f" ({errors[0]['source']}: {errors[0]['message']})" if errors else ""
        raise SkelError(f"no videos found in {', '.join(map(printable, sources)) or '(no inputs)'}{why}")
    ids = sorted(found)
    if labels:
        hits, notes = _match(_read_labels(labels), {sid: found[sid][0] for sid in ids}, labels, doubles)
        texts = [hits[sid].label if sid in hits else None for sid in ids]
        splits = [hits[sid].split if sid in hits else None for sid in ids]
        lines = [hits[sid].line if sid in hits else None for sid in ids]
    else:
        texts, splits, lines = [found[sid][1] for sid in ids], [None] * len(ids), None
        loose = [sid for sid, text in zip(ids, texts, strict=True) if text is None]
        notes = [f"{len(loose)} of {len(ids)} videos are not in a class folder (<input>/<class>/<video>, e.g. "
                 f"{found[loose[0]][0]}): extracted unlabelled; give the folder above the class folders, or --labels "
                 "CSV"] if 0 < len(loose) < len(ids) else []
    numbers, classes = _number(texts, labels or "class folders", lines)
    folded = Counter(c.casefold() for c in classes or [])
    if twins := [c for c in classes or [] if folded[c.casefold()] > 1]:
        notes.append(f"class names that differ only in case are separate classes: {', '.join(twins)}")
    videos = [Video(sid, str(found[sid][0]), num, split) for sid, num, split in zip(ids, numbers, splits, strict=True)]
    if hidden:
        notes.append(f"{len(hidden)} hidden file(s) passed over (e.g. {hidden[0]}; macOS leaves ._<name> beside each "
                     "file it copies): name one as an input to extract it")
    if others:
        notes.append(f"{len(others)} file(s) passed over, not videos by their extension (e.g. {others[0]}): name one "
                     "as an input to extract it")
    if again:
        notes.append(again[0] + (f" (and {len(again) - 1} more videos given twice)" if len(again) > 1 else ""))
    return Found(videos, classes, errors, notes)
