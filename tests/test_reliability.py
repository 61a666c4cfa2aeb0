"""Bad input, interrupted runs, numeric faults, safe loading, results never overwritten."""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import engine
import evaluate
import train
from datasets import BadSampleError, read_image, read_mask
from models import model_from_checkpoint
from util.checkpoint import atomic_torch_save, load_checkpoint
from util.metrics import dice_iou
from vlsm.losses import SegLoss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- bad files


def test_truncated_jpeg_and_png_are_clear_errors(tmp_path):
    img = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    for ext in ("jpg", "png"):
        p = tmp_path / f"x.{ext}"
        img.save(p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        with pytest.raises(BadSampleError, match=rf"x\.{ext}.*(corrupt|truncated)"):
            read_image(str(p))
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(BadSampleError, match="junk.png"):
        read_mask(str(tmp_path / "junk.png"))


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_image_modes_become_rgb_with_original_size(tmp_path, mode):
    arr = (np.random.default_rng(1).random((30, 40, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    if mode == "I;16":
        img = Image.fromarray((arr[..., 0].astype(np.uint16) * 257))
    else:
        img = img.convert(mode)
    p = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(p)
    out, hw = read_image(str(p))
    assert out.mode == "RGB" and hw == (30, 40) and np.asarray(out).std() > 10


def test_very_large_image_decodes_with_draft(tmp_path):
    p = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), (120, 30, 40)).save(p, quality=80)
    t = time.time()
    img, hw = read_image(str(p), draft_size=352)
    assert hw == (4000, 6000) and max(img.size) < 6000 and time.time() - t < 5


def test_empty_mask_is_kept_and_scores_by_the_rule(tmp_path):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "e.png")
    m = read_mask(str(tmp_path / "e.png"))
    assert m.shape == (20, 20) and m.sum() == 0
    assert dice_iou(torch.from_numpy(m), torch.from_numpy(m)) == (1.0, 1.0)


def test_non_binary_mask_without_foreground_is_refused(tmp_path):
    Image.fromarray(np.full((20, 20), 60, np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(BadSampleError, match="label map|no value >= 128"):
        read_mask(str(tmp_path / "grey.png"))


# ----------------------------------------------------------------------------- numeric faults


class NaNAfter(torch.nn.Module):
    """A tiny text-free model whose output becomes NaN for chosen calls."""
    uses_text = False
    input_size, image_mean, image_std = 16, (0.5,) * 3, (0.25,) * 3

    def __init__(self, bad_calls):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        self.calls, self.bad = 0, set(bad_calls)

    def forward(self, x):
        self.calls += 1
        y = self.conv(x)
        return y * float("nan") if self.calls in self.bad else y


def _batches(n):
    return [{"image": torch.randn(2, 3, 16, 16), "mask": (torch.rand(2, 1, 16, 16) > 0.5).float(),
             "text": ["", ""]} for _ in range(n)]


def test_non_finite_loss_skips_the_step_and_is_counted():
    model = NaNAfter({2, 4})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = engine.train_one_epoch(model, _batches(5), opt, SegLoss(), torch.device("cpu"), 0)
    assert stats["nonfinite_steps"] == 2 and stats["n_samples"] == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_too_many_non_finite_losses_stop_the_run():
    model = NaNAfter(range(1, 100))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(engine.NonFiniteLossError, match="3 non-finite losses in a row"):
        engine.train_one_epoch(model, _batches(5), opt, SegLoss(), torch.device("cpu"), 0, max_bad_steps=3)


# ----------------------------------------------------------------------------- safe loading


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_needing_code_is_refused(tmp_path):
    p = tmp_path / "evil.pth"
    with open(p, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(str(p))


def test_atomic_save_leaves_no_temp_file_and_keeps_old_on_failure(tmp_path):
    p = str(tmp_path / "ck.pth")
    atomic_torch_save({"a": torch.ones(2)}, p)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        atomic_torch_save({"a": Unsaveable()}, p)
    assert torch.equal(load_checkpoint(p)["a"], torch.ones(2))  # the finished checkpoint survives


# ----------------------------------------------------------------------------- runs


def _train_cmd(data_root, prompts_root, out, *extra):
    return [sys.executable, os.path.join(ROOT, "train.py"), "--data-root", data_root, "--prompts-root", prompts_root,
            "--output-dir", out, "--workers", "0", "--batch-size", "8", "--max-steps-per-epoch", "4",
            "--input-size", "64", "--no-test", *extra]


def _wait_for(path, n_lines, proc, timeout=240):
    t = time.time()
    while time.time() - t < timeout:
        if os.path.exists(path) and len(open(path).read().splitlines()) >= n_lines:
            return
        if proc.poll() is not None:
            raise AssertionError(f"train.py exited early: {proc.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError("timed out")


def _start_and_wait_one_epoch(data_root, prompts_root, tmp_path, epochs):
    """Start train.py in a subprocess and return (process, run folder, env) once epoch 0 is logged."""
    run = str(tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(data_root, prompts_root, str(tmp_path), "--epochs", str(epochs), "--out",
                                       run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=ROOT)
    _wait_for(os.path.join(run, "metrics.jsonl"), 1, proc)
    return proc, run, env


def test_sigkill_then_resume_finishes_all_epochs(small_synthetic, tmp_path):
    data_root, prompts_root = small_synthetic
    proc, run, env = _start_and_wait_one_epoch(data_root, prompts_root, tmp_path, 3)
    last = os.path.join(run, "last.pth")
    while load_checkpoint(last)["epoch"] < 1:  # written at the start, then after every epoch
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way through epoch 1
    proc.wait()
    assert not os.path.exists(os.path.join(run, "final.json"))
    assert load_checkpoint(os.path.join(run, "last.pth"))["epoch"] >= 1
    out = subprocess.run(_train_cmd(data_root, prompts_root, str(tmp_path), "--resume", run), env=env, cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [json.loads(x) for x in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    best = load_checkpoint(os.path.join(run, "best.pth"))
    assert best["epoch"] >= 1 and best["model_name"] == "clipseg"
    # a finished run is never resumed or reused
    again = subprocess.run(_train_cmd(data_root, prompts_root, str(tmp_path), "--resume", run), env=env, cwd=ROOT,
                           capture_output=True, text=True)
    assert again.returncode != 0 and "already finished" in again.stdout + again.stderr


def test_sigint_saves_last_checkpoint_and_exits_cleanly(small_synthetic, tmp_path):
    data_root, prompts_root = small_synthetic
    proc, run, _ = _start_and_wait_one_epoch(data_root, prompts_root, tmp_path, 50)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted in epoch" in out and "--resume" in out and "Traceback" not in out
    assert load_checkpoint(os.path.join(run, "last.pth"))["epoch"] >= 1
    cut = load_checkpoint(os.path.join(run, "interrupted.pth"))  # the half-done epoch's weights
    assert cut["interrupted_in_epoch"] >= 1 and "optimizer" not in cut
    model, _ = model_from_checkpoint(os.path.join(run, "interrupted.pth"))
    assert model.input_size == 64


def test_resume_after_interrupt_matches_an_uninterrupted_run(small_synthetic, tmp_path, monkeypatch):
    data_root, prompts_root = small_synthetic

    def run(name, *extra):
        args = train.get_args_parser().parse_args(
            _train_cmd(data_root, prompts_root, str(tmp_path), "--epochs", "3", "--out", str(tmp_path / name),
                       *extra)[2:])
        return train.main(args)

    run("straight")
    real = engine.train_one_epoch

    def interrupted_in_epoch_1(*a, **kw):
        if a[5] == 1:  # epoch 1: do two steps (weights and RNG move on), then Ctrl-C
            real(*a, **{**kw, "max_steps": 2})
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(engine, "train_one_epoch", interrupted_in_epoch_1)
    with pytest.raises(SystemExit) as e:
        run("cut")
    assert e.value.code == 130
    assert load_checkpoint(str(tmp_path / "cut" / "last.pth"))["epoch"] == 1
    monkeypatch.setattr(engine, "train_one_epoch", real)
    train.main(train.get_args_parser().parse_args(["--resume", str(tmp_path / "cut"), "--workers", "0"]))
    a = [json.loads(x) for x in open(tmp_path / "straight" / "metrics.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "cut" / "metrics.jsonl")]
    assert [r["epoch"] for r in b] == [0, 1, 2]
    for ra, rb in zip(a, b):
        for k in ("train_loss", "val_loss", "val_dice", "lr"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (ra["epoch"], k)


def test_run_folders_and_results_are_never_reused(small_synthetic, tmp_path):
    data_root, prompts_root = small_synthetic
    args = train.get_args_parser().parse_args(
        ["--data-root", data_root, "--prompts-root", prompts_root, "--output-dir", str(tmp_path), "--workers", "0",
         "--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "8", "--input-size", "64", "--no-test"])
    run = train.main(args)["run_dir"]
    with pytest.raises(FileExistsError):
        train.main(train.get_args_parser().parse_args(
            ["--data-root", data_root, "--prompts-root", prompts_root, "--out", run, "--no-test"]))
    ev = ["--checkpoint", run, "--data-root", data_root, "--prompts-root", prompts_root, "--workers", "0"]
    r1 = evaluate.main(evaluate.get_args_parser().parse_args(ev))
    r2 = evaluate.main(evaluate.get_args_parser().parse_args(ev))
    assert r1["results_dir"] != r2["results_dir"]
    assert os.path.exists(os.path.join(r1["results_dir"], "summary.json"))
    assert r1["dice_mean"] == pytest.approx(r2["dice_mean"])


# ----------------------------------------------------------------------------- property-based mask reading

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


def _encode(mask: np.ndarray, fmt: str) -> Image.Image:
    if fmt == "L255":
        return Image.fromarray(mask.astype(np.uint8) * 255)
    if fmt == "L01":
        return Image.fromarray(mask.astype(np.uint8))
    if fmt == "RGB":
        return Image.fromarray(np.stack([mask.astype(np.uint8) * 255] * 3, axis=2))
    if fmt == "P":
        img = Image.fromarray(mask.astype(np.uint8), mode="L").convert("P")
        img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)  # index 1 = a red that is dark in grayscale
        return img
    if fmt == "I16":
        return Image.fromarray(mask.astype(np.uint16) * 65535)
    raise ValueError(fmt)


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 16), st.integers(1, 16))),
       st.sampled_from(["L255", "L01", "RGB", "P", "I16"]))
def test_mask_reading_round_trips_across_formats(tmp_path_factory, mask, fmt):
    path = str(tmp_path_factory.mktemp("m") / "m.png")
    _encode(mask, fmt).save(path)
    assert np.array_equal(read_mask(path), mask)
