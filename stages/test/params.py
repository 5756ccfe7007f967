"""Parameters of the test and fuse stages (no torch here: the CLI reads their defaults)."""

from __future__ import annotations

from dataclasses import dataclass, field

_RUNTIME = {"fingerprint": False}


@dataclass(frozen=True)
class EvalParams:
    split: str = "test"
    num_clips: int = 10
    flip: bool = True
    checkpoint: str = "best"  # best | last
    input_size: int | None = None  # None: as rendered (pyskl tests at 64 x 64)
    samples_per_shard: int = field(default=32, metadata=_RUNTIME)
    batch_clips: int = field(default=20, metadata=_RUNTIME)  # clips per forward pass
    device: str = field(default="auto", metadata=_RUNTIME)
    threads: int | None = field(default=None, metadata=_RUNTIME)

    def __post_init__(self) -> None:
        if self.checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be best or last, got {self.checkpoint!r}")
        if self.num_clips < 1:
            raise ValueError("num_clips must be >= 1")


@dataclass(frozen=True)
class FuseParams:
    weights: tuple[float, ...] = ()  # one per input, in input order; empty: all 1
