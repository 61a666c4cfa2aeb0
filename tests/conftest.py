import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.environ.get("VLSM_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory):
    """A small synthetic dataset (same generator as the default, fewer images): (data_root, prompts_root)."""
    from datasets.synthetic import generate
    root = tmp_path_factory.mktemp("synthetic_small")
    generate(str(root / "data"), str(root / "prompts_json"), seed=1, counts={"train": 120, "val": 24, "test": 24})
    return str(root / "data"), str(root / "prompts_json")


@pytest.fixture(scope="session")
def kvasir_dir():
    d = os.path.join(SHARED_DATA, "kvasir_seg")
    if not os.path.isdir(os.path.join(d, "images")):
        pytest.skip("real Kvasir-SEG not available in ../shared/data")
    return d
