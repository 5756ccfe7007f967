"""Parameters of the train stage, checked without torch (the CLI reads their defaults, recipes parse them);
the model itself is built on the meta device by the stage's ``check``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.clip_spec import clip_spec_config
from models import MODEL_NAMES, uses_frames
from pipeline.fingerprint import UNLESS_DEFAULT
from pipeline.values import PATH

if TYPE_CHECKING:
    from stages.train.extra_aug import ExtraAug

_RUNTIME = {"fingerprint": False}  # changes how fast, not what is computed


def backbone_args(model: str, base_channels: int | None = None, stage_blocks: tuple[int, ...] | None = None,
                  rgb_base_channels: int | None = None, rgb_stage_blocks: tuple[int, ...] | None = None) -> dict:
    """``model_args`` from width and depth choices (None: the model's own); for rgbpose, ``base_channels`` and
    ``stage_blocks`` are the pose pathway's and the ``rgb_*`` ones the RGB pathway's."""
    pose = "pose_" if uses_frames(model) else ""
    if not pose and (rgb_base_channels or rgb_stage_blocks):
        raise ValueError("rgb_base_channels and rgb_stage_blocks are for the rgbpose model")
    args = {f"{pose}base_channels": base_channels, f"{pose}stage_blocks": stage_blocks,
            "rgb_base_channels": rgb_base_channels, "rgb_stage_blocks": rgb_stage_blocks}
    return {k: v for k, v in args.items() if v is not None}


def _norm(value: Any) -> Any:
    """``model_args`` with every sequence a tuple: a recipe gives lists, the CLI tuples, and the checkpoint
    pickles what it is given, so one fingerprint must hold one form to give one set of bytes."""
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return tuple(_norm(v) for v in value) if isinstance(value, list | tuple) else value


def check_model_args(model: str, model_args: dict, dropout: float) -> None:
    """Build the model as training will, on the meta device (no memory, no compute), so that a key its builder
    does not take, or a value it refuses, fails before anything runs instead of in its first epoch (imports
    torch: the train stage's ``check``, run for every step of a plan first)."""
    import torch

    from models import build_model

    try:
        with torch.device("meta"):
            build_model(model, num_classes=2, in_channels=17, dropout=dropout, **model_args)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"model_args {model_args} do not fit model {model}: {exc}") from None


# lower bounds of the numeric fields (None, where a field allows it, means its default)
_AT_LEAST = {"clip_len": 1, "input_size": 1, "epochs": 1, "steps": 1, "batch_size": 1, "repeat": 1, "min_epochs": 0,
             "warmup_steps": 0, "momentum": 0, "weight_decay": 0, "backbone_lr_mult": 0, "aug_rotate": 0,
             "aug_shear": 0, "mixup": 0, "seed": 0, "workers": 0, "threads": 1, "log_every": 1, "nproc": 1}


@dataclass(frozen=True)
class TrainParams:
    model: str = "slowonly"
    model_args: dict = field(default_factory=dict)  # backbone overrides, e.g. base_channels, stage_blocks
    dropout: float = 0.5
    clip_len: int = 48
    input_size: int = 56
    epochs: int = 24  # ignored when ``steps`` is set
    steps: int | None = None  # optimizer steps in all (rounded up to whole epochs): the same budget at any data size
    min_epochs: int = 0  # with ``steps``: at least this many epochs (small sets get the steps, large ones the passes)
    batch_size: int = 32  # global: split over the DDP ranks
    lr: float | None = None  # None: 0.4 x batch_size / 256 (pyskl's linear scaling)
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 40.0
    warmup_steps: int = 0
    repeat: int = 1  # passes over the training split per epoch (pyskl RepeatDataset)
    flip_ratio: float = 0.5
    seed: int = 0
    train_split: str | None = "train"  # None: every labelled sample
    val_split: str | None = None  # a split to validate on; None: carve ``val_fraction`` from the training split
    val_fraction: float | None = None  # None: 10% of the training clips, at most 500; 0: no validation
    # pretrained weights: a checkpoint file or a shipped model's name (models/pretrained; resolved to its file
    # here, before anything hashes it); the file's digest counts, not its path
    init: str | None = field(default=None, metadata={"fingerprint": False, PATH: True})
    backbone_lr_mult: float = 1.0  # backbone lr = lr x this (head: lr); 0 freezes the backbone
    aug_rotate: float = 0.0  # degrees; random affine per clip on the device (stages.train.extra_aug)
    aug_scale: float = 0.0  # zoom in [1 - s, 1 + s]
    aug_shear: float = 0.0  # degrees
    mixup: float = 0.0  # Beta(alpha, alpha); 0: off
    label_smoothing: float = 0.0
    # training steps in bf16 autocast on a CPU that computes bf16 natively (AVX512-BF16 / AMX: ~1.6x faster
    # steps, bench/README.md); a no-op elsewhere (CUDA always autocasts); validation and test stay float32
    bf16: bool = field(default=False, metadata={"fingerprint": UNLESS_DEFAULT})
    # training processes (DDP ranks, `skel train --nproc`): the batch splits over them, so the weights differ;
    # hashed only when not 1, so the outputs trained before it counted keep their fingerprints
    nproc: int = field(default=1, metadata={"fingerprint": UNLESS_DEFAULT})
    workers: int = field(default=2, metadata=_RUNTIME)  # DataLoader processes per rank
    device: str = field(default="auto", metadata=_RUNTIME)
    threads: int | None = field(default=None, metadata=_RUNTIME)  # None: OMP_NUM_THREADS, else cores / ranks
    log_every: int = field(default=10, metadata=_RUNTIME)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_args", _norm(self.model_args))
        for name in ("train_split", "val_split"):  # '' (a recipe's) is None (the CLI's): one fingerprint
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; choose from {sorted(MODEL_NAMES)}")
        for name, low in _AT_LEAST.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.init:
            self._resolve_init()
        for name in ("dropout", "label_smoothing", "val_fraction", "aug_scale"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.batch_size % self.nproc:
            raise ValueError(f"batch size {self.batch_size} does not split over {self.nproc} processes (--nproc)")
        if not 0 <= self.flip_ratio <= 1:
            raise ValueError(f"flip_ratio must be in [0, 1], got {self.flip_ratio}")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if uses_frames(self.model) and (self.extra_aug.affine or self.mixup or self.label_smoothing):
            raise ValueError("affine augmentation, mixup and label smoothing are for pose models")
        clip_spec_config(self.model, self.model_args, self.clip_len, self.input_size, self.flip_ratio)  # checks

    def _resolve_init(self) -> None:
        """A registry name becomes its shipped file; its network must be the one asked for (else the weights
        would not fit, after the whole plan)."""
        from models.pretrained import lookup, resolve_init

        entry = lookup(self.init) if not Path(self.init).is_file() else None
        object.__setattr__(self, "init", resolve_init(self.init))
        if entry is None:
            return
        if self.model != entry.model or self.model_args != _norm(entry.model_args):
            args = ", ".join(f"{k} = {v}" for k, v in entry.model_args.items())
            flags = " ".join(f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list | tuple) else v}"
                             for k, v in entry.model_args.items())
            raise ValueError(f"pretrained model {entry.file} is a {entry.model} with {args}; train that network "
                             f"(--model {entry.model} {flags}; in a recipe model = {entry.model!r}, model_args = "
                             f"{{ {args} }}), not {self.model} with {dict(self.model_args) or 'its default size'}")

    def carve_fraction(self, n_items: int) -> float:
        """The share of ``n_items`` training clips asked for validation (`stages.train.split.carve` takes at least one
        clip of each class that has two or more, so a small set gives more)."""
        return min(0.1, 500 / n_items) if self.val_fraction is None else self.val_fraction

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.4 * self.batch_size / 256

    @property
    def extra_aug(self) -> ExtraAug:
        from stages.train.extra_aug import ExtraAug
        return ExtraAug(rotate=self.aug_rotate, scale=self.aug_scale, shear=self.aug_shear, mixup=self.mixup,
                        label_smoothing=self.label_smoothing)
