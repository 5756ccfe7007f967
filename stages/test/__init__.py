"""`skel test` and `skel fuse`: multi-clip, flip-averaged scores on a split, metrics, late fusion.

``params`` (TestParams, FuseParams), ``stage`` (the test stage), ``fuse`` (the fuse stage), ``metrics``
(pyskl's top-k and mean class accuracy), ``report`` (scores tables, metrics.json, the confusion matrix).
"""
