"""Every script has a complete --help; zeroshot.py and predict.py run end to end on tiny models."""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import predict
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


def test_predict_writes_masks_at_original_size(small_synthetic, tmp_path):
    data_root, prompts_root = small_synthetic
    run = train.main(train.get_args_parser().parse_args(
        ["--data-root", data_root, "--prompts-root", prompts_root, "--output-dir", str(tmp_path), "--workers", "0",
         "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "4", "--no-test"]))["run_dir"]
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(img_dir / "a.png")
    Image.fromarray(np.zeros((33, 20), np.uint8)).save(img_dir / "b.jpg")
    out = predict.main(predict.get_args_parser().parse_args(
        ["--checkpoint", run, "--images", str(img_dir), "--prompt", "red circle", "--overlay",
         "--out", str(tmp_path / "pred")]))
    assert Image.open(os.path.join(out, "a_mask.png")).size == (70, 50)
    assert Image.open(os.path.join(out, "b_mask.png")).size == (20, 33)
    assert os.path.exists(os.path.join(out, "a_overlay.png"))
    with pytest.raises(FileExistsError, match="never overwritten"):
        predict.main(predict.get_args_parser().parse_args(
            ["--checkpoint", run, "--images", str(img_dir), "--out", out]))


@pytest.mark.parametrize("model", ["clipseg", "cris", "biomedclipseg", "biomedclipseg_d", "unet", "unetplusplus",
                                   "deeplabv3plus"])
def test_every_model_trains_and_evaluates_through_train_py(small_synthetic, tmp_path, model):
    data_root, prompts_root = small_synthetic
    res = train.main(train.get_args_parser().parse_args(
        ["--model", model, "--size", "tiny", "--data-root", data_root, "--prompts-root", prompts_root,
         "--output-dir", str(tmp_path), "--workers", "0", "--epochs", "1", "--max-steps-per-epoch", "2",
         "--batch-size", "4", "--input-size", "64"]))
    assert 0.0 <= res["best_val_dice"] <= 1.0 and res["test"]["n"] > 0
    assert os.path.exists(os.path.join(res["run_dir"], "best.pth"))
