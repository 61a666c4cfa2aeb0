import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# The one place that says where ../shared/data is: VLSM_SHARED_DATA, else the folder beside the checkout.
SHARED_DATA = os.environ.get("VLSM_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))
SHARED_ROOT = os.path.dirname(os.path.abspath(SHARED_DATA))

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


@pytest.fixture(scope="session")
def tiny_run(small_synthetic, tmp_path_factory):
    """One tiny CLIPSeg trained briefly on ``small_synthetic``, shared by the script tests (train once, use
    everywhere): dict with run_dir, output_dir, data_root, prompts_root and train.py's result."""
    from vlsm.training import default_args, run_training
    data_root, prompts_root = small_synthetic
    out = str(tmp_path_factory.mktemp("tiny_run"))
    res = run_training(default_args(data_root=data_root, prompts_root=prompts_root, output_dir=out, workers=0,
                                    epochs=1, max_steps_per_epoch=3, batch_size=8, input_size=64))
    return {"run_dir": res["run_dir"], "output_dir": out, "data_root": data_root, "prompts_root": prompts_root,
            "result": res}
