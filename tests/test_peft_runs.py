"""Parameter-efficient runs through train.py: small run folders that evaluate from themselves, base weights
checked by sha256, exact resume, and the one-line refusals of the command line."""
import json
import os
import shutil

import pytest
import torch

import evaluate
from models import model_from_checkpoint
from vlsm import cli
from vlsm.training import default_args, run_training


def _args(small_synthetic, out, **kw):
    data_root, prompts_root = small_synthetic
    return default_args(data_root=data_root, prompts_root=prompts_root, output_dir=str(out), workers=0,
                        input_size=64, batch_size=8, max_steps_per_epoch=2, device="cpu", **kw)


@pytest.fixture(scope="module")
def lora_run(small_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("peft_run")
    return run_training(_args(small_synthetic, out, epochs=2, peft="lora", lora_rank=4))


def test_peft_run_folder_is_small_and_evaluates_from_itself(lora_run, tiny_run, small_synthetic, tmp_path):
    run = lora_run["run_dir"]
    assert os.path.exists(os.path.join(run, "peft.safetensors"))
    assert not os.path.exists(os.path.join(run, "model.safetensors"))
    full = os.path.getsize(os.path.join(tiny_run["run_dir"], "best.pth"))
    small = os.path.getsize(os.path.join(run, "best.pth"))
    assert small < full / 5, (small, full)
    ckpt = torch.load(os.path.join(run, "best.pth"), weights_only=False)
    assert ckpt["peft"]["method"] == "lora" and ckpt["peft_base"]["weights"] is None
    assert all("lora_" in k for k in ckpt["model"]), list(ckpt["model"])[:3]
    data_root, prompts_root = small_synthetic
    res = evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", run, "--data-root", data_root, "--prompts-root", prompts_root, "--workers", "0",
         "--out", str(tmp_path / "ev")]))
    assert res["dice_mean"] == pytest.approx(lora_run["test"]["dice_mean"], abs=1e-6)
    # a copied run card alone (config.json + peft.safetensors): the same logits
    card = tmp_path / "card"
    card.mkdir()
    for f in ("config.json", "peft.safetensors", "args.json"):
        shutil.copy(os.path.join(run, f), card / f)
    a, _ = model_from_checkpoint(run)
    b, _ = model_from_checkpoint(str(card))
    x = torch.randn(2, 3, 64, 64)
    tok = a.tokenize(["red circle", "blue square"])
    assert torch.equal(a.eval()(x, **tok), b.eval()(x, **tok))


def test_peft_base_with_another_sha256_is_refused(lora_run, tmp_path):
    card = tmp_path / "card"
    card.mkdir()
    for f in ("config.json", "peft.safetensors"):
        shutil.copy(os.path.join(lora_run["run_dir"], f), card / f)
    cfg = json.loads((card / "config.json").read_text())
    cfg["peft_base"]["seed"] += 1          # another random init: other base weights
    (card / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="sha256 .* not .* as in training"):
        model_from_checkpoint(str(card))


def test_peft_resume_is_exact(small_synthetic, tmp_path):
    whole = run_training(_args(small_synthetic, tmp_path / "a", epochs=2, peft="adapter-shallow", seed=3,
                               no_test=True))
    first = _args(small_synthetic, tmp_path / "b", epochs=1, peft="adapter-shallow", seed=3, no_test=True)
    part = run_training(first)
    os.remove(os.path.join(part["run_dir"], "final.json"))   # as if stopped after epoch 1 of 2
    resumed = run_training(default_args(resume=part["run_dir"], epochs=2, device="cpu", workers=0))
    a = torch.load(os.path.join(whole["run_dir"], "last.pth"), weights_only=False)["model"]
    b = torch.load(os.path.join(resumed["run_dir"], "last.pth"), weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_peft_options_are_checked_in_one_line():
    parse = cli.train_options().parse_args
    with pytest.raises(ValueError, match="--lora-rank need --peft"):
        cli.peft_options(parse(["--lora-rank", "4"]))
    with pytest.raises(ValueError, match="--peft coop takes no --lora-rank"):
        cli.peft_options(parse(["--peft", "coop", "--lora-rank", "4"]))
    assert cli.peft_options(parse(["--peft", "adapter-dense", "--adapter-in", "vision,cond"])) == {
        "adapter_in": ["vision", "cond"]}


def test_peft_run_learns_its_task_and_reads_its_prompt(tmp_path):
    """LoRA (rank 16) on a random tiny CLIPSeg, its decoder trained too: 6 epochs of 300 synthetic images teach it
    the referring task, and a prompt naming another object of the image gets that object, not this one."""
    from datasets.synthetic import generate
    from vlsm.loading import load_trained
    from vlsm.scoring import score
    data_root, prompts_root = str(tmp_path / "data"), str(tmp_path / "pj")
    generate(data_root, prompts_root, seed=3, counts={"train": 300, "val": 24, "test": 40})
    res = run_training(default_args(data_root=data_root, prompts_root=prompts_root, output_dir=str(tmp_path / "runs"),
                                    workers=0, input_size=64, batch_size=32, epochs=6, lr=1e-3, device="cpu",
                                    peft="lora", lora_rank=16, train_decoder=True))
    loaded = load_trained(res["run_dir"])
    assert loaded.model.parameter_counts()["trainable"] < 0.05 * loaded.model.parameter_counts()["total"]
    swapped = score(loaded.model, "synthetic", "test", "p3", loaded.threshold, torch.device("cpu"),
                    eval_root=str(tmp_path / "swap"), data_root=data_root, prompts_root=prompts_root,
                    swap_prompts=True, quiet=True)
    assert res["test"]["dice_mean"] >= 0.45, res["test"]["dice_mean"]
    assert swapped["dice_mean"] < 0.35 * res["test"]["dice_mean"], (swapped["dice_mean"], res["test"]["dice_mean"])


def test_merged_lora_run_is_a_plain_model_folder_with_the_same_logits(lora_run, tmp_path):
    import export
    out = str(tmp_path / "merged")
    export.main(export.get_args_parser().parse_args(["--checkpoint", lora_run["run_dir"], "--merge", "--out", out]))
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert "peft" not in json.loads(open(os.path.join(out, "config.json")).read())
    a, _ = model_from_checkpoint(lora_run["run_dir"])
    b, _ = model_from_checkpoint(out)
    assert not getattr(b, "peft", None)
    x = torch.randn(2, 3, 64, 64)
    tok = a.tokenize(["red circle", "blue square"])
    assert torch.allclose(a.eval()(x, **tok), b.eval()(x, **tok), atol=1e-5)
