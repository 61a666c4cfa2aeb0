"""Is the Hugging Face hub usable?  One answer for every model loader.

Offline when ``HF_HUB_OFFLINE`` or ``VLSM_OFFLINE`` is set, or when huggingface.co cannot be reached
within a couple of seconds (checked once per process), so a missing download fails at once with a clear
message instead of after a minute of retries.
"""
from __future__ import annotations

import functools
import os
import socket

_TRUE = ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def _reachable(host: str = "huggingface.co", port: int = 443, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline() -> bool:
    if any(os.environ.get(v, "0").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "VLSM_OFFLINE")):
        return True
    return not _reachable()
