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

    def check_inputs(self, names: Collection[str], params: FuseParams) -> None:
        if not names:
            raise SkelError("stage fuse needs at least 1 input")
        if params.weights and len(params.weights) != len(names):
            raise SkelError(f"{len(params.weights)} weights for {len(names)} score inputs")

    def check_data(self, inputs: Mapping[str, Path], params: FuseParams) -> None:
        """An output given twice would count its scores twice (the weights say how much each counts)."""
        seen: dict[Path, str] = {}
        for name, path in sorted(inputs.items()):
            if (first := seen.setdefault(path.resolve(), name)) != name:
                raise SkelError(f"fuse: {path} is given twice ({first} and {name}): its scores would count twice; "
                                "--weights says how much each output counts")

    def shards(self, ctx: Context) -> list[Shard]:
        return [Shard("fuse")]

    def _inputs(self, ctx: Context) -> list[Path]:
        return [ctx.inputs[k] for k in sorted(ctx.inputs, key=lambda k: int(k.removeprefix("scores")))]

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        paths = self._inputs(ctx)
        weights = ctx.params.weights or (1.0,) * len(paths)
        ids, labels, total = read_scores(checked(paths[0] / SCORES))
        total = total * weights[0]
        order = {s: i for i, s in enumerate(ids)}
        classes = _classes(paths[0])
        for path, w in zip(paths[1:], weights[1:], strict=True):
            other_ids, other_labels, scores = read_scores(checked(path / SCORES))
            if sorted(other_ids) != sorted(ids):
                raise SkelError(f"{path}: scores cover other samples than {paths[0]}")
            if _classes(path) != classes:  # a column would add the scores of two classes
                raise SkelError(f"{path}: its classes {_classes(path)} are not those of {paths[0]} ({classes})")
            idx = np.array([order[s] for s in other_ids])
            if (labels[idx] != other_labels).any() or scores.shape[1] != total.shape[1]:
                raise SkelError(f"{path}: labels or classes differ from {paths[0]}")
            total[idx] += w * scores
        write_scores(ctx.out / SCORES, ids, labels, total)
        return {"samples": len(ids)}

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        _, labels, scores = read_scores(ctx.out / SCORES)
        return write_report(ctx.out, labels, scores, _classes(self._inputs(ctx)[0]))


def _classes(test_out: Path) -> list[str] | None:
    """The class names a test (or fuse) output scored, in its columns' order (None: unnamed)."""
    return (read_json(checked(test_out / METRICS)) or {}).get("classes")
