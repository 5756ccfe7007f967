"""Parameters of the extract stage (light: the CLI and predict read them without loading the models)."""

from __future__ import annotations

from dataclasses import dataclass, field

from models import Device, check_device
from pipeline.values import PATH

_FILES = {"fingerprint": False, PATH: True}  # hashed by content (and the videos' listing) instead: Stage.external


@dataclass(frozen=True)
class ExtractParams:
    """What to extract from each video (all of it changes the output, so all of it is fingerprinted)."""

    stride: int = 1
    fps: float | None = None
    max_frames: int | None = None  # keep at most this many selected frames (None: all)
    max_persons: int = 0  # persons kept per video, most salient first (0: all; render chooses: RenderParams)
    detect_every: int = 5  # run the detector every N frames (stages.extract.core explains why)
    lost_score: float = 0.25  # mean keypoint score under which a pose is no person (dropped / lost)
    iou_threshold: float = 0.3
    max_age: int = 15  # frames a track may go unseen and still be matched
    merge_gap: int = 30  # frames between the end of a track and a nearby one it continues (0: no joining)
    # people cut by the frame edge or touching (stages/extract/poses.py; bench/README.md ## extract)
    cut_extend: float = 0.5  # a box ending at a frame edge is posed on a crop extended past it by this × its size
    confirm_joints: int = 8  # a pose's person score: the mean of its best this many keypoint scores in the frame
    pose_nms: float = 0.5  # OKS at which two poses of one frame are one person (the better one kept)

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.max_persons < 0 or self.merge_gap < 0:
            raise ValueError("detect_every must be ≥ 1, max_persons and merge_gap ≥ 0")
        if self.cut_extend < 0 or not 1 <= self.confirm_joints <= 17 or not 0 < self.pose_nms <= 1:
            raise ValueError("cut_extend must be ≥ 0, confirm_joints in 1..17 and pose_nms in (0, 1]")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be ≥ 1, got {self.max_frames}")
        from stages.extract.video import FrameSelection

        FrameSelection(self.stride, self.fps)  # its checks of stride and fps, before any video is read


@dataclass(frozen=True)
class ExtractStageParams(ExtractParams):
    """Extraction parameters plus what to read (inputs, labels, models) and how to run it."""

    # what to read: made absolute for the plan (pipeline.values.absolute_paths)
    sources: tuple[str, ...] = field(default=(), metadata=_FILES)  # videos/folders/globs
    labels: str | None = field(default=None, metadata=_FILES)  # CSV video,label[,split]
    models: str | None = field(default=None, metadata=_FILES)  # directory, else $SKEL_MODELS
    pose_model: str = "movenet-thunder"
    # a model of models.detector.DETECTORS, or several joined by + (boxes fused)
    detector: str = "mb3-centernet+movenet-multipose"
    detector_size: int = 256  # long side of MoveNet MultiPose's input (512 for small, far people)
    detector_pad: float = 0.0  # > 0: + MultiPose on the frame padded by this × its size per side (close-ups)
    # boxes of the detectors with IoU ≥ this are one (higher: more boxes posed; pose NMS removes the duplicates)
    fuse_iou: float = 0.8
    min_score: float | None = None  # detector person score to keep a detection (None: each model's default)
    chunk_frames: int = 900  # split videos longer than this many source frames (0, or max_frames set: never)
    device: Device = field(default="auto", metadata={"fingerprint": False})
    threads: int = field(default=1, metadata={"fingerprint": False})  # per onnxruntime session

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.detector_pad < 0 or not 0 < self.fuse_iou <= 1:
            raise ValueError("detector_pad must be ≥ 0 and fuse_iou in (0, 1]")
        if self.detector_size < 32 or self.detector_size % 32:
            raise ValueError(f"detector_size must be a positive multiple of 32, got {self.detector_size}")
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {self.min_score}")
        if self.chunk_frames < 0 or self.threads < 1:
            raise ValueError("chunk_frames must be ≥ 0 and threads ≥ 1")
        check_device(self.device)
