"""`skel test`: multi-clip, flip-averaged scores of a train output's model on a split, with metrics.

Each sample gives ``num_clips`` fixed clips (pyskl's seeded uniform sampling) and, with ``flip``,
their mirrors (W reversed, left/right channels swapped); the softmax of all of them is averaged (pyskl
``average_clips='prob'``; docs/architecture.md, Test views). Shards are groups of samples, so testing
runs on Dask; each writes a part of the scores, and finalize joins them and writes the report.

This module declares the stage (no torch, for planning); the work is stages.test.score's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from inference.precision import bf16_in_float32
from inference.splits import split_items, warn_unlabelled
from models import check_device
from pipeline.inputs import inputs_of
from pipeline.stage import Context, Shard, Stage
from stages.test.params import TestParams
from stores.volumes import VolumeStore


class TestStage(Stage):
    __test__ = False  # not a pytest test class, although tests import it
    name = "test"
    version = "1"
    Params = TestParams
    inputs = {"model": ("train",)}

    def check(self, params: TestParams) -> None:
        """The device's name (whether it is there is the workers' question: they may have a GPU the driver has
        not; each shard's ``pick_device`` answers it)."""
        check_device(params.device)

    def external(self, params: TestParams) -> dict:
        return bf16_in_float32(params.bf16, params.device)

    def named_splits(self, params: TestParams) -> dict[str, str]:
        return {"split": params.split} if params.split else {}

    def check_data(self, inputs: Mapping[str, Path], params: TestParams) -> None:
        """The split has labelled samples in the volumes the model was trained on."""
        store = VolumeStore(inputs_of(inputs["model"])["volumes"])
        split_items(store, params.split, "--split")
        warn_unlabelled(store, params.split, "not scored")

    def shards(self, ctx: Context) -> list[Shard]:
        from stages.test.score import sample_shards

        return sample_shards(ctx)

    def run_shard(self, ctx: Context, shard: Shard) -> dict:
        from stages.test.score import score_shard

        return score_shard(ctx, shard)

    def finalize(self, ctx: Context, records: dict[str, dict]) -> dict:
        from stages.test.score import finalize

        return finalize(ctx, records)
