"""Results that say what they measured (pooled vs per-image, absent targets, threshold) and run folders that
describe themselves and load offline when copied elsewhere."""
import json
import os
import shutil

import pytest
import torch

import evaluate
from models import model_from_checkpoint
from util.summary import summarize
from vlsm.training import default_args, run_training


def _row(dice, iou, gt, pred, inter, pixels=100):
    return {"dice": dice, "iou": iou, "gt_pixels": gt, "pred_pixels": pred, "inter_pixels": inter, "pixels": pixels}


def test_summary_reports_pooled_and_absent_targets_apart():
    rows = [_row(2 * 10 / (20 + 10), 10 / 20, 20, 10, 10),   # present: Dice 0.667
            _row(2 * 40 / 80, 40 / 40, 40, 40, 40),           # present: Dice 1 (gt 40, pred 40, inter 40)
            _row(1.0, 1.0, 0, 0, 0),                           # absent, nothing predicted: 1 by the empty rule
            _row(0.0, 0.0, 0, 30, 0)]                          # absent, 30 % of the image predicted: 0
    s = summarize(rows)
    assert s["n"] == 4 and s["dice_mean"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)
    assert s["dice_pooled"] == pytest.approx(2 * 50 / (60 + 80))
    assert s["iou_pooled"] == pytest.approx(50 / (60 + 80 - 50))
    assert s["present"] == {"n": 2, "dice_mean": pytest.approx((2 / 3 + 1) / 2), "iou_mean": pytest.approx(0.75)}
    assert s["absent"]["n"] == 2 and s["absent"]["false_positive_rate"] == 0.5
    assert s["absent"]["mean_predicted_area"] == pytest.approx(0.15)


def test_run_folder_describes_itself_and_loads_offline_when_copied(tiny_run, tmp_path, monkeypatch):
    run = tiny_run["run_dir"]
    for name in ("model.safetensors", "config.json", "provenance.json", "README.md"):
        assert os.path.exists(os.path.join(run, name)), name
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["model_name"] == "clipseg" and cfg["input_size"] == 64 and cfg["threshold"] == 0.5
    prov = json.load(open(os.path.join(run, "provenance.json")))
    assert prov["seed"] == 0 and prov["packages"]["torch"] and len(prov["manifests"]) == 3
    assert all(len(h) == 64 for h in prov["manifests"].values())
    summary = json.load(open(os.path.join(tiny_run["result"]["test"]["results_dir"], "summary.json")))
    assert summary["metric_card"]["resolution"] == "original image size" and "dice_pooled" in summary
    card = open(os.path.join(run, "README.md")).read()
    assert "Metric card" in card and "empty_mask_rule" in card

    copied = tmp_path / "elsewhere"
    copied.mkdir()
    for name in ("model.safetensors", "config.json", "args.json"):
        shutil.copy(os.path.join(run, name), copied / name)
    monkeypatch.setenv("VLSM_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, _ = model_from_checkpoint(str(copied))
    b, _ = model_from_checkpoint(os.path.join(run, "best.pth"))
    x = torch.randn(2, 3, 64, 64)
    tok = a.tokenize(["red round circle", "blue square"])
    a.eval(), b.eval()
    assert torch.equal(a(x, **tok), b(x, **tok))
    res = evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", str(copied), "--data-root", tiny_run["data_root"], "--prompts-root",
         tiny_run["prompts_root"], "--workers", "0", "--threshold", "auto"]))
    sweep = res["threshold_sweep"]
    assert res["threshold"] == max(sweep, key=sweep.get, default=None) or sweep[str(res["threshold"])] == max(
        sweep.values())


def test_threshold_auto_is_chosen_on_validation_and_stored(small_synthetic, tmp_path):
    data_root, prompts_root = small_synthetic
    res = run_training(default_args(data_root=data_root, prompts_root=prompts_root, output_dir=str(tmp_path),
                                    workers=0, epochs=1, max_steps_per_epoch=1, batch_size=8, input_size=64,
                                    threshold="auto"))
    sweep = res["threshold_sweep"]
    assert sweep[str(res["threshold"])] == max(sweep.values())
    assert res["test"]["threshold"] == res["threshold"]
    assert json.load(open(os.path.join(res["run_dir"], "config.json")))["threshold"] == res["threshold"]
    _, ckpt = model_from_checkpoint(res["run_dir"])
    assert ckpt["threshold"] == res["threshold"]
