"""`skel fuse`: late fusion, the weighted sum of several test outputs' scores (joint + limb, 1:1 in the paper),
with the same scores table and report as a test output."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from pipeline.atomic import read_json
from pipeline.checked import checked
from pipeline.errors import SkelError
from pipeline.stage import Context, Shard, Stage
from stages.test.params import FuseParams
from stages.test.report import METRICS, SCORES, read_scores, write_report, write_scores


class FuseStage(Stage):
    """Weighted sum of the scores of test (or fuse) outputs given as inputs ``scores0``, ``scores1``, ...; each
    table is checked against its output's manifest as it is read."""

    name = "fuse"
    version = "1"
    Params = FuseParams

    def producers(self, name: str, params: FuseParams) -> tuple[str, ...]:
        """Any number of score inputs, ``scores0``, ``scores1``, ...: test or fuse outputs."""
        if not name.removeprefix("scores").isdigit():
            raise SkelError(f"stage fuse takes inputs scores0, scores1, ..., not {name!r}")
        return ("test", "fuse")

    def check_inputs(self, names: Collection[str], params: FuseParams, described: Mapping[str, dict] | None = None
                     ) -> None:
        if not names:
            raise SkelError("stage fuse needs at least 1 input")
        if params.weights and len(params.weights) != len(names):
            raise SkelError(f"{len(params.weights)} weights for {len(names)} score inputs")

    def check_data(self, inputs: Mapping[str, Path], params: FuseParams) -> None:
        """Before the output exists: an output given twice would count its scores twice (the weights say how much
        each counts); outputs of other samples, classes or labels cannot be summed (refused in the run, they left a
        failed output behind)."""
        seen: dict[Path, str] = {}
        for name, path in sorted(inputs.items()):
            if (first := seen.setdefault(path.resolve(), name)) != name:
                raise SkelError(f"fuse: {path} is given twice ({first} and {name}): its scores would count twice; "
                                "--weights says how much each output counts")
        _aligned(_ordered(inputs))

    def shards(self, ctx: Context) -> list[Shard]:
        return [Shard("fuse")]

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        paths = _ordered(ctx.inputs)
        weights = ctx.params.weights or (1.0,) * len(paths)
        ids, labels, parts = _aligned(paths)
        total = parts[0][1] * weights[0]
        for (idx, scores), w in zip(parts[1:], weights[1:], strict=True):
            total[idx] += w * scores
        write_scores(ctx.out / SCORES, ids, labels, total)
        return {"samples": len(ids)}

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        _, labels, scores = read_scores(ctx.out / SCORES)
        return write_report(ctx.out, labels, scores, _classes(_ordered(ctx.inputs)[0]))


def _ordered(inputs: Mapping[str, Path]) -> list[Path]:
    """The score inputs in their order (scores0, scores1, ...: the weights')."""
    return [inputs[k] for k in sorted(inputs, key=lambda k: int(k.removeprefix("scores")))]


def _aligned(paths: list[Path]) -> tuple[list[str], np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The first output's sample ids and labels, and each output's (rows of the first's order, scores); one line
    when an output covers other samples, or other classes or labels, than the first."""
    ids, labels, first = read_scores(checked(paths[0] / SCORES))
    order = {s: i for i, s in enumerate(ids)}
    classes = _classes(paths[0])
    parts = [(np.arange(len(ids)), first)]
    for path in paths[1:]:
        other_ids, other_labels, scores = read_scores(checked(path / SCORES))
        if sorted(other_ids) != sorted(ids):
            raise SkelError(f"fuse: {path}: scores cover other samples than {paths[0]}")
        if _classes(path) != classes:  # a column would add the scores of two classes
            raise SkelError(f"fuse: {path}: its classes {_classes(path)} are not those of {paths[0]} ({classes})")
        idx = np.array([order[s] for s in other_ids])
        if (labels[idx] != other_labels).any() or scores.shape[1] != first.shape[1]:
            raise SkelError(f"fuse: {path}: labels or classes differ from {paths[0]}")
        parts.append((idx, scores))
    return ids, labels, parts


def _classes(test_out: Path) -> list[str] | None:
    """The class names a test (or fuse) output scored, in its columns' order (None: unnamed)."""
    return (read_json(checked(test_out / METRICS)) or {}).get("classes")
