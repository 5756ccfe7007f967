"""Render stage: pose triplets -> heatmap volumes (``heatmap.render_volume``, a C kernel loaded on first use)."""
