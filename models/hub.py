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


def download_command(repo_id: str, local_dir: str, *files: str, revision: str | None = None) -> str:
    """The ``hf`` command (huggingface_hub's CLI) that fetches ``files`` (default: the whole repo) of
    ``repo_id`` into ``local_dir`` on a connected machine; for the hints of offline errors."""
    parts = ["hf download", repo_id, *files] + ([f"--revision {revision}"] if revision else [])
    return " ".join(parts + [f"--local-dir {local_dir}"])


def hub_file(repo_id: str, filename: str, what: str, hint: str, revision: str | None = None) -> str:
    """Path of ``filename`` from hub repo ``repo_id``: the local Hugging Face cache first, then the network
    unless ``offline()``.  Raises a ``FileNotFoundError`` that says what to supply (``hint``)."""
    from huggingface_hub import hf_hub_download
    try:
        return hf_hub_download(repo_id, filename, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001, S110 - not cached (or not a repo id): maybe try the network below
        pass
    cause = "offline: HF_HUB_OFFLINE/VLSM_OFFLINE set or huggingface.co unreachable"
    if not offline():
        try:
            return hf_hub_download(repo_id, filename, revision=revision)
        except Exception as e:  # noqa: BLE001
            cause = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    raise FileNotFoundError(
        f"{what}: '{filename}' of hub repo '{repo_id}' is not in the local Hugging Face cache and cannot "
        f"be downloaded ({cause}). {hint}")
