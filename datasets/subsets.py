"""Training on a fraction of the training split (data-efficiency curves).

One seeded permutation of a manifest's records; a fraction takes its first ``ceil(fraction * n)`` records, kept
in manifest order.  The subsets are therefore nested (the 10% subset lies inside the 25% one, inside the 50% one)
and the same seed always gives the same records.  Validation and test splits are never subsampled.  The subset
is identified by the sha256 of its (image, mask) names, recorded with the run.
"""
from __future__ import annotations

import hashlib
import json
import math
import random


def fraction_subset(records: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], dict]:
    """The records of a ``fraction`` in (0, 1] of ``records`` and what identifies them:
    ``{"fraction", "seed", "n", "of", "sha256"}``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--train-fraction must be in (0, 1], got {fraction}")
    n = len(records)
    order = list(range(n))
    random.Random(f"train-fraction:{seed}").shuffle(order)
    keep = sorted(order[:max(1, math.ceil(fraction * n))]) if n else []
    subset = [records[i] for i in keep]
    names = json.dumps([[r.get("img_name"), r.get("mask_name")] for r in subset]).encode()
    return subset, {"fraction": fraction, "seed": seed, "n": len(subset), "of": n,
                    "sha256": hashlib.sha256(names).hexdigest()}
