"""Running a trained network: checkpoints read back, the device, and the clips a network sees (pyskl's
sampling and heatmap geometry, the test views of a sample). Used by `skel test`, `skel export` and
`skel predict`; training builds on it (inference/ never imports stages/).
"""
