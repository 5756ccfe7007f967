"""What stage outputs hold on disk: the COCO-17 layout, triplet tables, heatmap volumes, RGB frames, the
errors table, the restricted pickle reader and the pyskl pickle export (docs/architecture.md, On-disk schemas).

Stores know about skeletons and volumes; the engine (pipeline) does not. They import from pipeline only
its file primitives (atomic writes, errors, checked reads, sizes), never the runner.
"""
