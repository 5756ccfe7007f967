"""`skel predict`: label videos, people in them, or a live stream with a trained pose model.

``model`` (input contract, ONNX and torch backends), ``views`` (test-time views in numpy), ``windows``
(sliding windows, whole scene or per person), ``offline`` (a video file), ``live`` (a camera or stream),
``overlay`` (drawing), ``synthetic`` (stick-figure videos with known actions, for tests and benchmarks).
"""
