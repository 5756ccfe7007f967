"""A digest inside an exported ONNX file, so that a reader tells a damaged file from a good one without a
sidecar: the file's sha256, taken with the digest's own 64 characters as zeros, is the model property
``skel.sha256`` (docs/architecture.md, "Atomic shards and resume"). onnxruntime reads the file as it is;
checking needs no onnx package."""

from __future__ import annotations

import hashlib

KEY = "skel.sha256"
PLACEHOLDER = "0" * 64
# how protobuf writes the property's key and the length of its value (StringStringEntryProto: key 1, value 2)
_MARK = b"\x0a" + bytes([len(KEY)]) + KEY.encode() + b"\x12" + bytes([len(PLACEHOLDER)])


def seal(data: bytes) -> bytes:
    """A serialized model whose ``KEY`` property holds ``PLACEHOLDER``, with the digest in its place."""
    at = data.rfind(_MARK) + len(_MARK)
    if at < len(_MARK) or data[at:at + 64] != PLACEHOLDER.encode():
        raise ValueError(f"no {KEY} placeholder in the model")
    return data[:at] + _digest(data).encode() + data[at + 64:]


def intact(data: bytes) -> bool | None:
    """True: the file is as exported; False: damaged; None: it records no digest (exported before skel recorded
    one, or the property's own bytes are damaged: the reader asks onnxruntime whether the property is there)."""
    at = data.rfind(_MARK) + len(_MARK)
    if at < len(_MARK):
        return None
    recorded = data[at:at + 64]
    return _digest(data[:at] + PLACEHOLDER.encode() + data[at + 64:]).encode() == recorded


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
