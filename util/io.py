"""Files that are never half-written, and reads that say what is wrong.

Every result file of the toolkit (manifests, markers, ``summary.json``, ``final.json``, ``per_image.csv``, run
cards) goes through :func:`write_atomic`: a temporary file in the same folder, fsync, then ``os.replace``, so a
kill leaves the old file or the new one, never half of one.  :func:`read_json` returns ``None`` for a file that
is absent or cannot be parsed (a half-written file from an older version, a disk error) and says which, so a
caller treats it as "not done" instead of trusting it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_output(path: str):
    """Yield a temporary path in ``path``'s folder for a writer that takes a file name (``torch.save``,
    safetensors, PIL, nibabel); on success it is fsynced and renamed to ``path``, on failure removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_atomic(path: str, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync and rename."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(path: str, obj, ensure_ascii: bool = True, indent: int | None = 1) -> None:
    """JSON (indent 1, trailing newline), written atomically."""
    write_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii) + "\n")


def write_csv_atomic(path: str, rows: list[dict], columns) -> None:
    """A CSV with a header, written atomically (missing keys left empty, extra keys ignored)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, buf.getvalue())


class UnreadableFile(ValueError):
    """A file that exists but cannot be parsed."""


def read_json(path: str, strict: bool = False):
    """The parsed JSON at ``path``; ``None`` when absent.  A file that cannot be parsed raises
    :class:`UnreadableFile` naming it when ``strict``, else returns ``None`` (the caller treats it as missing;
    :func:`unreadable_reason` says why)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        if strict:
            raise UnreadableFile(f"{path}: cannot be read as JSON ({e}); it was probably cut short by a kill "
                                 f"during an older write; remove it to compute it again") from None
        return None


def unreadable_reason(path: str) -> str | None:
    """Why the JSON file at ``path`` cannot be used (``None`` if it can, or does not exist)."""
    try:
        read_json(path, strict=True)
    except UnreadableFile as e:
        return str(e)
    return None


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
