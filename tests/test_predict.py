"""predict.py (masks, outline overlays, the per-image CSV; a run folder or --model/--weights) and vlsm.figures."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

import predict
from vlsm import figures
from vlsm.training import default_args, run_training


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("pred_imgs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 255, (33, 20), dtype=np.uint8)).save(d / "b.jpg")  # grayscale JPEG
    (d / "notes.txt").write_text("not an image")
    return d


def run_predict(*argv):
    return predict.main(predict.get_args_parser().parse_args([*argv, "--workers", "0"]))


def read_rows(out):
    with open(os.path.join(out, "predictions.csv")) as f:
        return {os.path.basename(r["image"]): r for r in csv.DictReader(f)}


def test_outline_is_drawn_on_the_border_with_a_dark_halo():
    img = np.zeros((40, 40, 3), np.uint8)
    img[...] = (200, 30, 30)  # a red object: a red tint would vanish on it
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = figures.draw_outline(img, mask, width=1)
    assert (out[10, 10:30] == (0, 255, 0)).all() and (out[29, 10:30] == (0, 255, 0)).all()
    assert (out[15:25, 15:25] == (200, 30, 30)).all()     # inside untouched
    assert (out[9, 12] == (0, 0, 0)).all()                # halo just outside the outline
    assert (out[0, 0] == (200, 30, 30)).all()
    assert (figures.draw_outline(img, np.zeros((40, 40), bool)) == img).all()


def test_predict_with_weights_writes_masks_overlays_and_csv(images, tmp_path):
    out = run_predict("--model", "clipseg", "--size", "tiny", "--weights", "none", "--images", str(images),
                      "--prompt", "red circle", "--out", str(tmp_path / "p"), "--batch-size", "1")
    rows = read_rows(out)
    assert sorted(rows) == ["a.png", "b.jpg"]
    for name, (w, h) in (("a", (70, 50)), ("b", (20, 33))):
        mask = np.asarray(Image.open(os.path.join(out, f"{name}_mask.png")))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert Image.open(os.path.join(out, f"{name}_overlay.png")).size == (w, h)
        r = rows[f"{name}.{'png' if name == 'a' else 'jpg'}"]
        fg = mask > 0
        assert (int(r["width"]), int(r["height"])) == (w, h) and int(r["area_px"]) == fg.sum()
        assert float(r["area_fraction"]) == pytest.approx(fg.sum() / (w * h), abs=1e-6)
        if fg.any():
            ys, xs = np.nonzero(fg)
            assert [int(r[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")] == [xs.min(), ys.min(),
                                                                                        xs.max(), ys.max()]
            assert 0.5 < float(r["mean_prob_in_mask"]) <= float(r["max_prob"]) <= 1.0
        else:
            assert r["bbox_x1"] == "" and r["mean_prob_in_mask"] == ""
    # threshold 0: every pixel is foreground, the box is the whole image
    full = read_rows(run_predict("--model", "clipseg", "--size", "tiny", "--weights", "none", "--images",
                                 str(images / "a.png"), "--threshold", "0", "--out", str(tmp_path / "full"),
                                 "--no-overlay"))["a.png"]
    assert (int(full["area_px"]), float(full["area_fraction"])) == (3500, 1.0)
    assert [full[k] for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")] == ["0", "0", "69", "49"]
    assert not os.path.exists(tmp_path / "full" / "a_overlay.png")


def test_predict_from_a_run_folder_and_the_showcase(small_run, images, tmp_path, capsys):
    run, data_root, prompts_root = small_run
    out = run_predict("--checkpoint", run, "--images", str(images / "*.png"), str(images / "b.jpg"),
                      "--prompt", "red round circle", "--out", str(tmp_path / "pred"))
    assert sorted(read_rows(out)) == ["a.png", "b.jpg"]
    assert Image.open(os.path.join(out, "b_mask.png")).size == (20, 33)
    with pytest.raises(FileExistsError, match="never overwritten"):
        run_predict("--checkpoint", run, "--images", str(images), "--out", out)
    with pytest.raises(ValueError, match="--checkpoint RUN"):
        run_predict("--images", str(images))
    png = figures.main(figures.get_args_parser().parse_args(["--checkpoint", run, "--n", "2", "--device", "cpu"]))
    assert png == os.path.join(run, "showcase.png") and capsys.readouterr().out.strip().endswith("showcase.png")
    img = Image.open(png)
    assert img.format == "PNG" and img.size[0] > img.size[1] > 200  # 2 rows x 4 panels


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from datasets.synthetic import generate
    root = tmp_path_factory.mktemp("pred_run")
    generate(str(root / "data"), str(root / "pj"), seed=4, counts={"train": 8, "val": 4, "test": 4})
    run = run_training(default_args(model="clipseg", size="tiny", input_size=64, data="synthetic", prompt="p3",
                                    epochs=1, max_steps_per_epoch=1, batch_size=4, workers=0, no_test=True,
                                    data_root=str(root / "data"), prompts_root=str(root / "pj"),
                                    output_dir=str(root / "runs"), out=str(root / "runs" / "r")))["run_dir"]
    return run, str(root / "data"), str(root / "pj")
