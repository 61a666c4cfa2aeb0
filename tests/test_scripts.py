"""Every script has a complete --help; zeroshot.py and predict.py run end to end on tiny models."""
import importlib
import os
import subprocess
import sys

import pytest

import train
import zeroshot
from models import create_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script", ["train", "evaluate", "zeroshot", "predict", "make_prompts", "perturb_prompts"])
def test_help_is_complete(script):
    text = importlib.import_module(script).get_args_parser().format_help()
    assert text.startswith("usage:") and len(text) > 300
    parser = importlib.import_module(script).get_args_parser()
    assert not [a.option_strings for a in parser._actions if a.help is None]  # every option is explained


def test_help_runs_as_a_command():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0 and "--freeze-image-encoder" in out.stdout


def test_zeroshot_from_a_saved_pretrained_folder(small_synthetic, tmp_path):
    data_root, prompts_root = small_synthetic
    m = create_model("clipseg", size="tiny")
    m.hf.save_pretrained(tmp_path / "clipseg")
    args = zeroshot.get_args_parser().parse_args(
        ["--model", "clipseg", "--weights", str(tmp_path / "clipseg"), "--data", "synthetic", "--prompts", "p1,p3",
         "--data-root", data_root, "--prompts-root", prompts_root, "--output-dir", str(tmp_path / "zs"),
         "--workers", "0"])
    res = zeroshot.main(args)
    assert [r["prompt"] for r in res] == ["p1", "p3"]
    assert all(0.0 <= r["dice_mean"] <= 1.0 and r["n"] > 0 for r in res)


@pytest.mark.parametrize("model", ["clipseg", "cris", "biomedclipseg", "biomedclipseg_d", "unet", "unetplusplus",
                                   "deeplabv3plus"])
def test_every_model_trains_and_evaluates_through_train_py(small_synthetic, tmp_path, model):
    data_root, prompts_root = small_synthetic
    res = train.main(train.get_args_parser().parse_args(
        ["--model", model, "--size", "tiny", "--data-root", data_root, "--prompts-root", prompts_root,
         "--output-dir", str(tmp_path), "--workers", "0", "--epochs", "1", "--max-steps-per-epoch", "2",
         "--batch-size", "4", "--input-size", "64"]
        # text-free CNNs on multi-target data (several shapes per image): one output channel per class
        + (["--multiclass"] if model in ("unet", "unetplusplus", "deeplabv3plus") else [])))
    assert 0.0 <= res["best_val_dice"] <= 1.0 and res["test"]["n"] > 0
    assert os.path.exists(os.path.join(res["run_dir"], "best.pth"))
