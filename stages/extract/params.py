"""Parameters of the extract stage (light: the CLI and predict read them without loading the models)."""

from __future__ import annotations

from dataclasses import dataclass, field

from models import Device


@dataclass(frozen=True)
class ExtractParams:
    """What to extract from each video (all of it changes the output, so all of it is fingerprinted)."""

    stride: int = 1
    fps: float | None = None
    max_frames: int | None = None  # keep at most this many selected frames (None: all)
    max_persons: int = 2  # persons kept per video, most salient first (0: all tracks, for per-person use)
    detect_every: int = 5  # run the detector every N frames (see the module docstring)
    lost_score: float = 0.25  # mean keypoint score under which a pose is no person (dropped / lost)
    iou_threshold: float = 0.3
    max_age: int = 15  # frames a track may go unseen and still be matched

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.max_persons < 0:
            raise ValueError("detect_every must be ≥ 1 and max_persons ≥ 0")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be ≥ 1, got {self.max_frames}")


@dataclass(frozen=True)
class ExtractStageParams(ExtractParams):
    """Extraction parameters plus what to read (inputs, labels, models) and how to run it."""

    sources: tuple[str, ...] = field(default=(), metadata={"fingerprint": False})  # videos/folders/globs
    labels: str | None = field(default=None, metadata={"fingerprint": False})  # CSV video,label[,split]
    models: str | None = field(default=None, metadata={"fingerprint": False})  # directory, else $SKEL_MODELS
    pose_model: str = "movenet-thunder"
    # a model of models.detector.DETECTORS, or several joined by + (boxes fused)
    detector: str = "mb3-centernet+movenet-multipose"
    detector_size: int = 256  # long side of MoveNet MultiPose's input (512 for small, far people)
    min_score: float | None = None  # detector person score to keep a detection (None: each model's default)
    chunk_frames: int = 900  # split videos longer than this many source frames (0, or max_frames set: never)
    device: Device = field(default="auto", metadata={"fingerprint": False})
    threads: int = field(default=1, metadata={"fingerprint": False})  # per onnxruntime session
