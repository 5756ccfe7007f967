"""RGBPose-Conv3D (pyskl ``RGBPoseConv3D`` + ``RGBPoseHead`` + ``MMRecognizer3D``): RGB and pose in one network.

Two ResNet3d pathways built from the SlowOnly blocks of ``models.layers``, joined by bidirectional
lateral connections after the early stages, one linear classifier per pathway, two cross-entropy losses, and
the two heads' softmax scores fused at test time. Paper configuration (pyskl ``configs/rgbpose_conv3d``)::

    imgs [N, 3, 8, 224, 224]                      heatmap_imgs [N, 17, 32, 56, 56]
      | rgb_path conv1 1x7x7 s2, maxpool s2          | pose_path conv1 1x7x7 s1, maxpool s1
      | layer1 (3 blocks)  -> 256 x 8 x 56²          |
      | layer2 (4 blocks)  -> 512 x 8 x 28²   <-->   | layer1 (4 blocks) -> 128 x 32 x 28²
      |   cat pose->rgb  layer2_lateral  conv 7x1x1 t/4:  128 -> 128 channels
      |   cat rgb->pose  layer1_lateral  deconv 7x1x1 tx4: 512 ->  32 channels
      | layer3 (6 blocks)  -> 1024 x 8 x 14²  <-->   | layer2 (6 blocks) -> 256 x 32 x 14²
      |   cat pose->rgb  layer3_lateral  conv:    256 -> 256;  rgb->pose layer2_lateral deconv: 1024 -> 64
      | layer4 (3 blocks)  -> 2048 x 8 x 7²          | layer3 (3 blocks) -> 512 x 32 x 7²
      v fc_rgb                                       v fc_pose

The RGB input must be ``speed_ratio`` times shorter than the pose input and 4x larger spatially (both
pathways reach the same T and H x W at the lateral points). State-dict keys follow pyskl
(``backbone.rgb_path.layer2_lateral.conv.weight``, ``backbone.pose_path.layer1_lateral.bn.weight``,
``cls_head.fc_rgb.weight``), so a pyskl checkpoint loads after stripping mmcv's wrapping. Not ported:
pyskl's ``rgb_detach``/``pose_detach`` and lateral drop-path options (all off in its configs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Bottleneck3d, ConvModule, add_slowonly_stages, init_conv_bn, init_fc

__all__ = [
    "DeConvModule",
    "POSE_SLOWONLY",
    "RGB_R50",
    "RGBPoseConfig",
    "RGBPoseConv3D",
    "RGBPoseHead",
    "RGBPoseLoss",
    "RGBPoseRecognizer",
    "PathwayConfig",
    "ResNet3dPathway",
    "build_rgbpose",
    "fuse_scores",
    "loss",
]

RESNET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}  # bottleneck ResNets


@dataclass(frozen=True)
class PathwayConfig:
    """One ResNet3d pathway (pyskl ``ResNet3dPathway`` arguments). Per-stage tuples have one entry per stage.

    ``lateral_activate[i]`` = 1: stage i's input also receives features from the other pathway (pyskl's
    flag of the same name); ``lateral_infl`` scales those features' channels as in pyskl.
    """

    in_channels: int
    base_channels: int
    stage_blocks: tuple[int, ...]
    inflate: tuple[int, ...]
    spatial_strides: tuple[int, ...]
    temporal_strides: tuple[int, ...]
    conv1_stride: tuple[int, int]  # (temporal, spatial)
    pool1_stride: tuple[int, int]
    lateral_activate: tuple[int, ...]
    lateral_infl: int
    conv1_kernel: tuple[int, int, int] = (1, 7, 7)

    def __post_init__(self) -> None:
        n = len(self.stage_blocks)
        per_stage = (self.inflate, self.spatial_strides, self.temporal_strides, self.lateral_activate)
        if any(len(v) != n for v in per_stage):
            raise ValueError(f"every per-stage setting needs {n} entries (stage_blocks={self.stage_blocks})")

    @property
    def stage_out(self) -> list[int]:
        """Output channels of each stage (bottleneck expansion 4)."""
        return [self.base_channels * 2**i * Bottleneck3d.expansion for i in range(len(self.stage_blocks))]


# pyskl rgbpose_conv3d.py: rgb_pathway (ResNet3d-50 defaults) and pose_pathway.
RGB_R50 = PathwayConfig(
    in_channels=3, base_channels=64, stage_blocks=RESNET_DEPTHS[50], inflate=(0, 0, 1, 1),
    spatial_strides=(1, 2, 2, 2), temporal_strides=(1, 1, 1, 1), conv1_stride=(1, 2), pool1_stride=(1, 2),
    lateral_activate=(0, 0, 1, 1), lateral_infl=1,
)  # fmt: skip
POSE_SLOWONLY = PathwayConfig(
    in_channels=17, base_channels=32, stage_blocks=(4, 6, 3), inflate=(0, 1, 1),
    spatial_strides=(2, 2, 2), temporal_strides=(1, 1, 1), conv1_stride=(1, 1), pool1_stride=(1, 1),
    lateral_activate=(0, 1, 1), lateral_infl=16,
)  # fmt: skip


@dataclass(frozen=True)
class RGBPoseConfig:
    """Both pathways and how they are joined (pyskl ``RGBPoseConv3D`` arguments; ``lateral=False``: no joins)."""

    rgb: PathwayConfig = RGB_R50
    pose: PathwayConfig = POSE_SLOWONLY
    speed_ratio: int = 4  # pose frames per RGB frame
    channel_ratio: int = 4
    fusion_kernel: int = 7
    lateral: bool = True

    def __post_init__(self) -> None:
        if len(self.rgb.stage_blocks) != len(self.pose.stage_blocks) + 1:
            raise ValueError("the RGB pathway needs exactly one stage more than the pose pathway")
        if self.rgb.lateral_activate[:2] != (0, 0) or self.pose.lateral_activate[0] != 0:
            raise ValueError("laterals can feed RGB stages >= 3 and pose stages >= 2 only (as pyskl's forward)")

    def rgb_lateral(self, stage: int) -> bool:
        """Whether RGB stage ``stage`` (0-based) takes pose features (from pose stage ``stage - 2``)."""
        return self.lateral and bool(self.rgb.lateral_activate[stage])

    def pose_lateral(self, stage: int) -> bool:
        """Whether pose stage ``stage`` (0-based) takes RGB features (from RGB stage ``stage``)."""
        return self.lateral and bool(self.pose.lateral_activate[stage])


class DeConvModule(nn.Module):
    """``ConvTranspose3d`` (no bias) -> BN -> ReLU upsampling time by ``stride[0]`` (pyskl ``DeConvModule``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.ConvTranspose3d(in_channels, out_channels, (kernel, 1, 1), stride=(stride, 1, 1),
                                       padding=((kernel - 1) // 2, 0, 0), bias=False)
        self.bn = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, h, w = x.shape
        x = self.conv(x, output_size=(n, self.conv.out_channels, t * self.stride, h, w))
        return self.relu(self.bn(x))


class ResNet3dPathway(nn.Module):
    """Stem + stages of ``ResNet3dSlowOnly`` whose stage inputs may carry ``extra[i]`` lateral channels.

    Built by the same ``models.layers.add_slowonly_stages`` as ``ResNet3dSlowOnly``, with each stage's first
    block widened for the concatenated lateral channels.
    The lateral modules themselves are attached by ``RGBPoseConv3D`` (as ``layer{i}_lateral``).
    """

    def __init__(self, cfg: PathwayConfig, extra: Sequence[int]) -> None:
        super().__init__()
        self.out_channels = add_slowonly_stages(
            self, in_channels=cfg.in_channels, base_channels=cfg.base_channels, conv1_kernel=cfg.conv1_kernel,
            conv1_stride=cfg.conv1_stride, pool1_stride=cfg.pool1_stride, stage_blocks=cfg.stage_blocks,
            inflate=cfg.inflate, spatial_strides=cfg.spatial_strides, temporal_strides=cfg.temporal_strides,
            dilations=(1,) * len(cfg.stage_blocks), extra=extra,
        )  # fmt: skip

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.conv1(x))


class RGBPoseConv3D(nn.Module):
    """The two pathways and their laterals; ``forward(imgs, heatmap_imgs) -> (rgb_features, pose_features)``."""

    def __init__(self, cfg: RGBPoseConfig = RGBPoseConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        rgb, pose = cfg.rgb, cfg.pose
        n_pose = len(pose.stage_blocks)
        # Channels each lateral delivers (pyskl: rgb planes * infl // ratio; pose planes * ratio // infl).
        to_rgb = [rgb.stage_out[s - 1] * rgb.lateral_infl // cfg.channel_ratio if cfg.rgb_lateral(s) else 0
                  for s in range(n_pose + 1)]
        to_pose = [pose.stage_out[s - 1] * cfg.channel_ratio // pose.lateral_infl if cfg.pose_lateral(s) else 0
                   for s in range(n_pose)]
        self.rgb_path = ResNet3dPathway(rgb, to_rgb)
        self.pose_path = ResNet3dPathway(pose, to_pose)
        k, r = cfg.fusion_kernel, cfg.speed_ratio
        for s in range(n_pose + 1):
            if to_rgb[s]:  # pose stage s-2 (layer s-1) -> RGB stage s, named after the RGB layer it follows
                lateral = ConvModule(pose.stage_out[s - 2], to_rgb[s], (k, 1, 1), stride=(r, 1, 1),
                                     padding=((k - 1) // 2, 0, 0), norm=False, act=False)
                self.rgb_path.add_module(f"layer{s}_lateral", lateral)
        for s in range(n_pose):
            if to_pose[s]:  # RGB stage s (layer s+1) -> pose stage s, named after the pose layer it follows
                self.pose_path.add_module(f"layer{s}_lateral", DeConvModule(rgb.stage_out[s], to_pose[s], k, r))
        init_conv_bn(self)  # pyskl/mmcv: kaiming conv, BN 1/0 (ConvTranspose3d keeps torch's default, as pyskl)
        for m in self.modules():
            if isinstance(m, Bottleneck3d):
                nn.init.zeros_(m.conv3.bn.weight)

    def forward(self, imgs: torch.Tensor, heatmap_imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, pose = self.rgb_path, self.pose_path
        x_rgb = rgb.layer1(rgb.stem(imgs))
        x_pose = pose.stem(heatmap_imgs)
        n_pose = len(self.cfg.pose.stage_blocks)
        for s in range(1, n_pose + 1):  # RGB layer s+1 runs alongside pose layer s
            x_rgb = getattr(rgb, f"layer{s + 1}")(x_rgb)
            x_pose = getattr(pose, f"layer{s}")(x_pose)
            if s == n_pose:
                break
            from_pose = getattr(rgb, f"layer{s + 1}_lateral", None)
            from_rgb = getattr(pose, f"layer{s}_lateral", None)
            joined_rgb = x_rgb if from_pose is None else torch.cat((x_rgb, from_pose(x_pose)), dim=1)
            if from_rgb is not None:
                x_pose = torch.cat((x_pose, from_rgb(x_rgb)), dim=1)
            x_rgb = joined_rgb
        return x_rgb, x_pose


class RGBPoseHead(nn.Module):
    """pyskl ``RGBPoseHead``: per pathway global average pool -> dropout -> linear (``fc_rgb``, ``fc_pose``)."""

    def __init__(self, *, in_channels: tuple[int, int], num_classes: int,
                 dropout: float | tuple[float, float] = 0.5, init_std: float = 0.01) -> None:
        super().__init__()
        p_rgb, p_pose = (dropout, dropout) if isinstance(dropout, float | int) else dropout
        self.dropout_rgb = nn.Dropout(p=p_rgb)
        self.dropout_pose = nn.Dropout(p=p_pose)
        self.fc_rgb = nn.Linear(in_channels[0], num_classes)
        self.fc_pose = nn.Linear(in_channels[1], num_classes)
        for fc in (self.fc_rgb, self.fc_pose):
            init_fc(fc, init_std)

    def forward(self, feats: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x_rgb, x_pose = (f.mean(dim=(2, 3, 4)) for f in feats)
        return self.fc_rgb(self.dropout_rgb(x_rgb)), self.fc_pose(self.dropout_pose(x_pose))


Inputs = Mapping[str, torch.Tensor] | Sequence[torch.Tensor]


def _unpack(inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(inputs, Mapping):
        return inputs["imgs"], inputs["heatmap_imgs"]
    imgs, heatmaps = inputs
    return imgs, heatmaps


class RGBPoseRecognizer(nn.Module):
    """pyskl ``MMRecognizer3D``: ``backbone`` + ``cls_head``; input ``{"imgs", "heatmap_imgs"}`` or a pair.

    ``imgs`` [N, 3, T_rgb, H, W] and ``heatmap_imgs`` [N, K, T_pose, h, w], or with a clip axis
    [N, clips, ...] (folded into the batch; ``forward`` averages the clips' logits, ``predict_proba`` their
    softmax, as pyskl ``average_clips='prob'``). ``forward`` returns ``(rgb_logits, pose_logits)``.
    """

    def __init__(self, *, backbone: RGBPoseConv3D, cls_head: RGBPoseHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.cls_head = cls_head

    def _clip_logits(self, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor, int]:
        imgs, heatmaps = _unpack(inputs)
        if imgs.dim() != heatmaps.dim() or imgs.dim() not in (5, 6):
            raise ValueError(f"expected 5-D or 6-D imgs and heatmaps, got {tuple(imgs.shape)}, {tuple(heatmaps.shape)}")
        clips = imgs.shape[1] if imgs.dim() == 6 else 1
        if imgs.dim() == 6:
            imgs, heatmaps = imgs.flatten(0, 1), heatmaps.flatten(0, 1)
        rgb, pose = self.cls_head(self.backbone(imgs, heatmaps))
        return rgb, pose, clips

    def forward(self, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, pose, clips = self._clip_logits(inputs)
        return rgb.unflatten(0, (-1, clips)).mean(1), pose.unflatten(0, (-1, clips)).mean(1)

    @torch.no_grad()
    def predict_proba(self, inputs: Inputs, weights: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
        """Fused class probabilities [N, C]: each head's softmax averaged over clips, then ``fuse_scores``."""
        rgb, pose, clips = self._clip_logits(inputs)
        p_rgb = rgb.softmax(-1).unflatten(0, (-1, clips)).mean(1)
        p_pose = pose.softmax(-1).unflatten(0, (-1, clips)).mean(1)
        return _weighted(p_rgb, p_pose, weights)


class RGBPoseLoss(NamedTuple):
    total: torch.Tensor  # weighted sum, to backpropagate
    rgb: torch.Tensor  # unweighted cross-entropy of each head, to log
    pose: torch.Tensor


def loss(outputs: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
         weights: tuple[float, float] = (1.0, 1.0)) -> RGBPoseLoss:
    """pyskl's two losses (``loss_components=['rgb', 'pose']``, ``loss_weights=[1, 1]``): w_rgb·CE + w_pose·CE."""
    ce_rgb = F.cross_entropy(outputs[0], labels)
    ce_pose = F.cross_entropy(outputs[1], labels)
    return RGBPoseLoss(weights[0] * ce_rgb + weights[1] * ce_pose, ce_rgb, ce_pose)


def _weighted(p_rgb: torch.Tensor, p_pose: torch.Tensor, weights: tuple[float, float]) -> torch.Tensor:
    return (weights[0] * p_rgb + weights[1] * p_pose) / (weights[0] + weights[1])


def fuse_scores(rgb_logits: torch.Tensor, pose_logits: torch.Tensor,
                weights: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """Test-time fusion: softmax of each head, weighted and normalised to sum 1 per row.

    pyskl reports ``RGBPose_1:1`` as the plain weighted sum; dividing by the weights' sum keeps a
    probability distribution and does not change the ranking.
    """
    return _weighted(rgb_logits.softmax(-1), pose_logits.softmax(-1), weights)


def build_rgbpose(
    *,
    num_classes: int,
    pose_in_channels: int = 17,
    dropout: float | tuple[float, float] = 0.5,
    # RGB pathway overrides
    rgb_depth: int = 50,
    rgb_base_channels: int = 64,
    rgb_stage_blocks: tuple[int, ...] | None = None,
    # Pose pathway overrides
    pose_base_channels: int = 32,
    pose_stage_blocks: tuple[int, ...] = (4, 6, 3),
    # Joins
    lateral: bool = True,
    speed_ratio: int = 4,
    channel_ratio: int = 4,
) -> RGBPoseRecognizer:
    """RGBPose-Conv3D as pyskl's config (36.15M params with 60 classes); overrides make small CPU variants.

    ``rgb_stage_blocks`` wins over ``rgb_depth`` (50, 101 or 152, bottleneck ResNets).
    """
    if rgb_stage_blocks is None:
        if rgb_depth not in RESNET_DEPTHS:
            raise ValueError(f"rgb_depth must be one of {sorted(RESNET_DEPTHS)}, got {rgb_depth}")
        rgb_stage_blocks = RESNET_DEPTHS[rgb_depth]
    cfg = RGBPoseConfig(
        rgb=replace(RGB_R50, base_channels=rgb_base_channels, stage_blocks=tuple(rgb_stage_blocks)),
        pose=replace(POSE_SLOWONLY, in_channels=pose_in_channels, base_channels=pose_base_channels,
                     stage_blocks=tuple(pose_stage_blocks)),
        speed_ratio=speed_ratio, channel_ratio=channel_ratio, lateral=lateral,
    )  # fmt: skip
    backbone = RGBPoseConv3D(cfg)
    head = RGBPoseHead(in_channels=(backbone.rgb_path.out_channels, backbone.pose_path.out_channels),
                       num_classes=num_classes, dropout=dropout)
    return RGBPoseRecognizer(backbone=backbone, cls_head=head)
