"""Train stage: stream clips from the rendered volumes and fit a PoseConv3D model, one epoch per shard."""
