"""Parameters of the test and fuse stages (no torch here: the CLI reads their defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.fingerprint import UNLESS_DEFAULT

_RUNTIME = {"fingerprint": False}


@dataclass(frozen=True)
class TestParams:
    """The test stage's settings."""

    __test__ = False  # not a pytest test class, although tests import it

    split: str = "test"
    num_clips: int = 10
    flip: bool = True
    checkpoint: str = "best"  # best | last
    input_size: int | None = None  # None: as rendered (pyskl tests at 64 x 64)
    # bf16 autocast on a CPU that computes bf16 natively (TrainParams.bf16); scores move by ~1e-3
    bf16: bool = field(default=False, metadata={"fingerprint": UNLESS_DEFAULT})
    samples_per_shard: int = field(default=32, metadata=_RUNTIME)
    batch_clips: int = field(default=20, metadata=_RUNTIME)  # RGBPose: clips per forward pass (pose models: a sample)
    device: str = field(default="auto", metadata=_RUNTIME)
    threads: int | None = field(default=None, metadata=_RUNTIME)

    def __post_init__(self) -> None:
        if self.checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be best or last, got {self.checkpoint!r}")
        for name in ("num_clips", "input_size", "samples_per_shard", "batch_clips", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class FuseParams:
    weights: tuple[float, ...] = ()  # one per input, in input order; empty: all 1

    def __post_init__(self) -> None:
        if self.weights and (min(self.weights) < 0 or sum(self.weights) <= 0):
            raise ValueError(f"weights must be >= 0 with a positive sum, got {', '.join(map(str, self.weights))}")
