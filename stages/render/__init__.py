"""Render stage: pose triplets → heatmap volumes."""

from stages.render.heatmap import render_volume

__all__ = ["render_volume"]
