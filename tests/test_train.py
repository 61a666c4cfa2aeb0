"""End to end: a tiny CLIPSeg learns the synthetic referring task and really uses its prompt."""
import json
import os

import pytest
import torch

import evaluate
import train
from datasets.synthetic import generate
from models import model_from_checkpoint
from vlsm import training


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    data_root, prompts_root = str(root / "data"), str(root / "prompts_json")
    generate(data_root, prompts_root, seed=3, counts={"train": 400, "val": 40, "test": 40})
    args = train.get_args_parser().parse_args(
        ["--data-root", data_root, "--prompts-root", prompts_root, "--output-dir", str(root / "runs"),
         "--prompt", "p3", "--epochs", "10", "--batch-size", "32", "--lr", "1e-3", "--workers", "0", "--seed", "0"])
    result = train.main(args)
    return result, data_root, prompts_root


def test_tiny_clipseg_learns_and_uses_its_prompt(trained_run):
    result, data_root, prompts_root = trained_run
    assert result["best_val_dice"] >= 0.8, result
    assert result["test"]["dice_mean"] >= 0.8
    swapped = evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", result["run_dir"], "--swap-prompts", "--data-root", data_root,
         "--prompts-root", prompts_root, "--workers", "0"]))
    # prompts naming another object of the same image: the model must segment that other object instead
    assert swapped["dice_mean"] < 0.25 * result["test"]["dice_mean"], swapped


def test_run_folder_contents_and_metrics_at_original_size(trained_run):
    result, _, _ = trained_run
    run = result["run_dir"]
    for name in ("args.json", "metrics.jsonl", "last.pth", "best.pth", "final.json"):
        assert os.path.exists(os.path.join(run, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run))
    rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    assert len(rows) == 10 and rows[-1]["val_loss"] < rows[0]["val_loss"]
    summary = json.load(open(os.path.join(result["test"]["results_dir"], "summary.json")))
    assert summary["metric_card"]["resolution"] == "original image size" and summary["n"] > 80


def test_checkpoint_round_trip_gives_identical_predictions(trained_run):
    result, _, _ = trained_run
    model, ckpt = model_from_checkpoint(os.path.join(result["run_dir"], "best.pth"))
    args = train.get_args_parser().parse_args([])
    ref = training.build_model(training.resolve_args(args))
    ref.load_state_dict(ckpt["model"])
    model.eval(), ref.eval()
    x = torch.randn(2, 3, model.input_size, model.input_size)
    tok = model.tokenize(["red round circle", "blue boxy square"])
    assert torch.equal(model(x, **tok), ref(x, **tok))
