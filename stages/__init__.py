"""The stages, by name. Modules are imported on demand so `skel status` does not pay for torch."""

from __future__ import annotations

from importlib import import_module

from pipeline.errors import SkelError
from pipeline.stage import Stage

STAGES: dict[str, str] = {
    "import": "stages.import_pkl:ImportStage",
    "extract": "stages.extract.stage:ExtractStage",
    "render": "stages.render.stage:RenderStage",
    "frames": "stages.frames.stage:FramesStage",
    "train": "stages.train.stage:TrainStage",
    "test": "stages.test.stage:TestStage",
    "fuse": "stages.test.fuse:FuseStage",
}


def get_stage(name: str) -> Stage:
    """An instance of the stage called ``name``."""
    if name not in STAGES:
        raise SkelError(f"unknown stage {name!r} (known: {', '.join(STAGES)})")
    module, cls = STAGES[name].split(":")
    return getattr(import_module(module), cls)()


def installed_version(name: str) -> str | None:
    """The version of the stage called ``name`` that this skel makes (None: it has no such stage)."""
    return get_stage(name).version if name in STAGES else None
