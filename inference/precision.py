"""What a bf16 request computes on this machine, torch-free until one is made (stages plan without torch)."""

from __future__ import annotations

import logging
from functools import cache

log = logging.getLogger("skel")


def bf16_in_float32(bf16: bool, device: str) -> dict:
    """What an output's fingerprint adds when ``bf16`` is asked for on a CPU without native bf16: its steps run in
    float32 there (``inference.device.autocast``), so it is neither a cache hit of the bf16 run a native CPU makes
    nor one of its own there ({} elsewhere: every other output keeps its fingerprint)."""
    if not bf16:
        return {}
    from inference.device import cpu_bf16, pick_device

    if pick_device(device).type == "cpu" and not cpu_bf16():
        _say_float32()
        return {"bf16": "float32: no native bf16 on this CPU"}
    return {}


@cache
def _say_float32() -> None:
    log.warning("--bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is only slower: float32 instead")
