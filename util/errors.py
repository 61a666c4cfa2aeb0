"""The one-line error handler of every entry point (scripts and ``python -m`` modules).

A user's mistake (a bad file, manifest or option, missing weights) prints one line naming the file and the fix,
never a traceback from deep inside a library; set ``VLSM_DEBUG=1`` to see the traceback.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

_WORKER_RE = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\s*Original Traceback", re.S)


def clear_message(e: BaseException) -> str:
    """The one line a user needs.  An exception re-raised by a DataLoader worker carries the worker's whole
    traceback in its message; keep only the original error's own text."""
    text = str(e)
    if _WORKER_RE.match(text):
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+(Error|Exception): ", "", last.strip())
    return text


USER_ERRORS = (FileNotFoundError, FileExistsError, ImportError, ValueError)


def run_cli(main, parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Run a script's ``main``; user-facing errors (bad files, manifests, missing weights; datasets'
    BadSampleError and ManifestError are ValueErrors) print one clear line instead of a traceback, wherever
    they happen, DataLoader workers included."""
    args = parser.parse_args(argv)
    try:
        main(args)
    except USER_ERRORS as e:
        if os.environ.get("VLSM_DEBUG"):
            raise
        print(f"error: {clear_message(e)}", file=sys.stderr)
        sys.exit(2)
