"""Recognizer3D: backbone -> cls_head, with multi-clip test-time averaging (pyskl ``Recognizer3D``)."""

import torch
from torch import nn

__all__ = ["Recognizer3D"]


class Recognizer3D(nn.Module):
    """``backbone`` + ``cls_head`` under the names pyskl uses, so pyskl state-dict keys line up.

    Inputs are heatmap volumes ``[N, K, T, H, W]`` or, for multi-clip testing, ``[N, clips, K, T, H, W]``
    (clips are folded into the batch and the backbone sees ``[N * clips, K, T, H, W]``).

    - ``forward`` returns logits ``[N, num_classes]``; for 6-D input the per-clip logits are averaged
      (pyskl ``average_clips='score'``).
    - ``predict_proba`` returns class probabilities; for 6-D input it averages the per-clip softmax
      (pyskl ``average_clips='prob'``, the PoseConv3D test setting).
    """

    def __init__(self, *, backbone: nn.Module, cls_head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.cls_head = cls_head

    def _clip_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits per clip: ``[N, C]`` for 5-D input, ``[N, clips, C]`` for 6-D input."""
        if x.dim() == 5:
            return self.cls_head(self.backbone(x))
        if x.dim() == 6:
            n, clips = x.shape[:2]
            logits = self.cls_head(self.backbone(x.flatten(0, 1)))
            return logits.reshape(n, clips, -1)
        raise ValueError(f"expected [N, K, T, H, W] or [N, clips, K, T, H, W], got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self._clip_logits(x)
        return logits.mean(dim=1) if logits.dim() == 3 else logits

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N, num_classes]``; multi-clip input averages the clips' softmax.

        Runs without autograd; put the model in ``eval()`` first (dropout and BN behave as in training
        otherwise).
        """
        probs = self._clip_logits(x).softmax(dim=-1)
        return probs.mean(dim=1) if probs.dim() == 3 else probs

    @torch.no_grad()
    def predict_views(self, frames: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Class probabilities [views, num_classes] of views that share frames: ``frames`` [K, F, H, W] holds
        each distinct frame once, ``index`` [views, L] each view's frames (positions on F). A backbone whose
        first layers see one frame at a time (``frame_wise``) runs them once per distinct frame, not once
        per view; the result equals ``predict_proba`` of the gathered views up to float rounding."""
        cl3d = torch.channels_last_3d
        if not getattr(self.backbone, "frame_wise", False):
            return self.predict_proba(frames[:, index].transpose(0, 1).contiguous(memory_format=cl3d))
        per_frame = self.backbone.forward_frames(frames.transpose(0, 1).unsqueeze(2).contiguous(memory_format=cl3d))
        clips = per_frame.squeeze(2)[index].transpose(1, 2).contiguous(memory_format=cl3d)  # [views, C, L, h, w]
        return self.cls_head(self.backbone.forward_clips(clips)).softmax(dim=-1)
