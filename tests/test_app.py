"""The prompt explorer's logic without a browser (vlsm/app/explorer.py, vlsm/app/inputs.py): the image is encoded
once for N prompts and never again for a threshold change, maps equal the model's forward pass, a text-free CNN
gives one mask, the "does it read the text?" comparison, uploads (PNG, DICOM, NIfTI) and downloads, and every
bad input as one clear message.  The page itself: tests/test_app_browser.py."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from models import create_model
from util.metrics import upsample_logits
from util.runtime import prepare_images
from vlsm.app import AppInputError, PromptExplorer, bench_app, check_threshold, parse_prompts
from vlsm.app.explorer import MAX_PROMPTS, PALETTE, image_key
from vlsm.app.inputs import (
    describe_file,
    other_image_prompt,
    read_example,
    read_upload,
    run_examples,
    write_downloads,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clipseg():
    torch.manual_seed(0)
    return create_model("clipseg", weights=None, size="tiny", input_size=64).eval()


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)


def counting(model, monkeypatch) -> dict:
    """Count the model's own calls of encode_image / encode_text / decode (not the explorer's bookkeeping)."""
    calls = {"encode_image": 0, "encode_text": 0, "decode": 0}
    for name in calls:
        real = getattr(model, name)

        def wrapped(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(model, name, wrapped)
    return calls


# ----------------------------------------------------------------------------- caching


def test_n_prompts_cost_one_image_encoding_and_a_threshold_change_costs_nothing(clipseg, rgb, monkeypatch):
    calls = counting(clipseg, monkeypatch)
    ex = PromptExplorer(clipseg, 0.5)
    prompts = ["red circle", "blue square", "yellow triangle", "small green star"]
    first = ex.segment(rgb, prompts, 0.5)
    assert calls == {"encode_image": 1, "encode_text": 1, "decode": 1}  # one batch of 4 prompts
    assert ex.counts == {"image_encodings": 1, "text_encodings": 4, "decodes": 4}
    assert [p.shape for p in first["probs"]] == [(90, 130)] * 4 and len(first["masks"]) == 4

    for t in (0.0, 0.3, 0.47, 0.9, 1.0):  # threshold changes: no forward pass at all
        again = ex.segment(rgb, prompts, t)
        assert [np.array_equal(m, p > t) for m, p in zip(again["masks"], first["probs"])] == [True] * 4
    assert calls == {"encode_image": 1, "encode_text": 1, "decode": 1}

    ex.segment(rgb, prompts + ["one more prompt"], 0.5)  # a new prompt: its text only, the image stays cached
    assert calls == {"encode_image": 1, "encode_text": 2, "decode": 2}
    assert ex.counts == {"image_encodings": 1, "text_encodings": 5, "decodes": 5}

    other = rgb.copy()
    other[0, 0] ^= 1  # another image (one pixel differs): encoded once more
    ex.segment(other, prompts[:1], 0.5)
    assert calls["encode_image"] == 2 and image_key(other) != image_key(rgb)


def test_maps_equal_the_forward_pass_at_the_original_size(clipseg, rgb):
    ex = PromptExplorer(clipseg, 0.5)
    probs = ex.probabilities(rgb, ["red circle", "blue square"])
    x, _ = ex.transform.resize(Image.fromarray(rgb), np.zeros(rgb.shape[:2], bool))
    for text, prob in zip(["red circle", "blue square"], probs):
        with torch.no_grad():
            logits = clipseg(prepare_images(x[None], clipseg, "cpu"), **clipseg.tokenize([text]))
        expect = torch.sigmoid(upsample_logits(logits, rgb.shape[:2]))[0, 0].numpy()
        assert prob.dtype == np.float32 and np.abs(prob - expect).max() < 1e-5


def test_caches_are_bounded(clipseg, rgb):
    ex = PromptExplorer(clipseg, 0.5, image_cache=2, map_cache_bytes=3 * rgb.shape[0] * rgb.shape[1] * 4)
    ex.probabilities(rgb, ["a", "b", "c", "d"])
    assert len(ex._maps) == 3 and ex._map_bytes <= ex._map_cache_bytes
    images = [np.full_like(rgb, v) for v in (1, 2, 3)]
    for im in images:
        ex.probabilities(im, ["a"])
    assert len(ex._features) == 2 and not any(k[0] == image_key(rgb) for k in ex._maps)


def test_a_text_free_cnn_gives_one_mask_and_no_comparison(rgb, monkeypatch):
    unet = create_model("unet", weights=None, size="tiny", input_size=64).eval()
    calls = counting(unet, monkeypatch)
    ex = PromptExplorer(unet, 0.5)
    assert not ex.uses_text
    res = ex.segment(rgb, ["whatever is typed is ignored"], 0.5)
    assert res["labels"] == ["unet (no text)"] and len(res["masks"]) == 1 and res["masks"][0].shape == (90, 130)
    ex.segment(rgb, None, 0.2)
    assert calls == {"encode_image": 1, "encode_text": 0, "decode": 1}
    with pytest.raises(AppInputError, match="reads no text"):
        ex.text_reliance(rgb, ["polyp"], 0.5, "other")


def test_text_reliance_compares_with_empty_gibberish_and_another_images_prompt(clipseg, rgb, monkeypatch):
    calls = counting(clipseg, monkeypatch)
    ex = PromptExplorer(clipseg, 0.5)
    ex.segment(rgb, ["red circle"], 0.5)
    t = float(np.median(ex.probabilities(rgb, ["red circle"])[0]))  # a threshold with a non-empty typed mask
    rel = ex.text_reliance(rgb, ["red circle"], t, "blue boxy square")
    assert calls["encode_image"] == 1  # the image is not encoded again
    rows = rel["rows"]
    assert [r["condition"] for r in rows] == ["typed", "empty", "gibberish", "other image"]
    assert rows[0]["dice_vs_typed"] == 1.0 and rows[1]["text"] == ""
    gib = rows[2]["text"]
    assert len(gib) == len("red circle") and gib[3] == " " and gib != "red circle"
    assert rows[3]["text"] == "blue boxy square"
    assert all(0.0 <= r["dice_vs_typed"] <= 1.0 for r in rows) and "Dice" in rel["verdict"]
    assert ex.text_reliance(rgb, ["red circle"], 1.0)["verdict"].startswith("The typed prompt gives an empty mask")


def test_table_has_area_in_mm2_when_the_spacing_is_known(clipseg, rgb):
    ex = PromptExplorer(clipseg, 0.5)
    res = ex.segment(rgb, ["a", "b"], 0.0, spacing=(0.5, 0.25))
    row = res["rows"][0]
    assert row["area_px"] == 90 * 130 and row["area_mm2"] == pytest.approx(90 * 130 * 0.125)
    assert row["colour"] == "#%02x%02x%02x" % PALETTE[0] and res["rows"][1]["colour"] == "#%02x%02x%02x" % PALETTE[1]
    assert ex.segment(rgb, ["a"], 1.0)["rows"][0]["mean_prob_in_mask"] == ""  # empty mask: nothing inside
    assert ex.segment(rgb, ["a"], 0.5)["rows"][0]["area_mm2"] == ""          # no spacing: no mm²


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("value", [1.5, -0.01, "abc", None, float("nan")])
def test_threshold_outside_0_1_is_refused(value, clipseg, rgb):
    with pytest.raises(AppInputError, match="threshold must be"):
        check_threshold(value)
    if value is not None:  # None in segment() means the default threshold
        with pytest.raises(AppInputError, match="threshold must be"):
            PromptExplorer(clipseg, 0.5).segment(rgb, ["a"], value)
    assert check_threshold(0) == 0.0 and check_threshold("1") == 1.0


def test_empty_prompt_box_and_too_many_prompts_are_refused():
    for text in ("", "   \n\n  ", None):
        with pytest.raises(AppInputError, match="prompt box is empty"):
            parse_prompts(text)
    assert parse_prompts(" polyp \n\n large polyp\npolyp\n") == ["polyp", "large polyp"]
    with pytest.raises(AppInputError, match=f"at most {MAX_PROMPTS}"):
        parse_prompts("\n".join(f"p{i}" for i in range(MAX_PROMPTS + 1)))


def test_unreadable_and_unknown_files_are_one_line(tmp_path):
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(AppInputError, match="scan.png") as e:
        read_upload(str(bad))
    assert "\n" not in str(e.value)
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(AppInputError, match="not an image this app reads"):
        describe_file(str(txt))
    with pytest.raises(AppInputError, match="no such file"):
        read_upload(str(tmp_path / "missing.jpg"))


def test_a_volume_needs_a_slice_and_gives_its_spacing(tmp_path, clipseg):
    nib = pytest.importorskip("nibabel")
    from nibabel.testing import data_path
    src = os.path.join(str(data_path), "anatomical.nii")  # 33 x 41 x 25 voxels of 2 mm
    kind = describe_file(src)
    assert kind.kind == "volume" and kind.count == 25 and kind.windowed
    with pytest.raises(AppInputError, match=r"3-D volume with 25 axial slices: choose a slice \(0..24\)"):
        read_upload(src)
    with pytest.raises(AppInputError, match="25 does not exist"):
        read_upload(src, 25)
    image = read_upload(src, 12, "auto")
    assert image.kind == "volume" and image.spacing == pytest.approx((2.0, 2.0)) and image.rgb.shape[2] == 3
    res = PromptExplorer(clipseg, 0.5).segment(image.rgb, ["brain"], 0.0, image.spacing)
    assert res["rows"][0]["area_mm2"] == pytest.approx(res["rows"][0]["area_px"] * 4.0)
    files = write_downloads(str(tmp_path / "out"), image, res, "tiny clipseg")
    nii = [f for f in files if f.endswith(".nii.gz")]
    assert len(nii) == 1 and [os.path.basename(f) for f in files if f.endswith(".png")] == ["anatomical_1_brain.png"]
    back = nib.load(nii[0])
    assert back.shape == nib.load(src).shape and np.allclose(back.affine, nib.load(src).affine)
    assert int(np.asarray(back.dataobj).sum()) == res["rows"][0]["area_px"]  # one slice filled, the rest 0


def test_dicom_upload_window_and_seg_download(tmp_path, clipseg):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    src = get_testdata_file("CT_small.dcm")
    assert describe_file(src).kind == "dicom"
    plain, abdomen = read_upload(src), read_upload(src, window="ct-abdomen")
    assert plain.spacing == pytest.approx((0.661468, 0.661468)) and not np.array_equal(plain.rgb, abdomen.rgb)
    with pytest.raises(AppInputError, match="CT_small.dcm"):
        read_upload(src, window="not-a-window")
    res = PromptExplorer(clipseg, 0.5).segment(abdomen.rgb, ["liver"], 0.4, abdomen.spacing)
    files = write_downloads(str(tmp_path / "out"), abdomen, res, "tiny clipseg")
    seg = pydicom.dcmread([f for f in files if f.endswith("_seg.dcm")][0])
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "liver"
    assert np.array_equal(seg.pixel_array.astype(bool), res["masks"][0])


def test_png_masks_and_csv_at_the_original_size(tmp_path, clipseg, rgb):
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    image = read_upload(str(path))
    assert image.rgb.shape == (90, 130, 3) and image.spacing is None
    res = PromptExplorer(clipseg, 0.5).segment(image.rgb, ["red circle", "Blue / square!"], 0.5)
    files = write_downloads(str(tmp_path / "out"), image, res)
    names = [os.path.basename(f) for f in files]
    assert names == ["photo_1_red-circle.png", "photo_2_blue-square.png", "photo_masks.csv"]
    for f, m in zip(files, res["masks"]):
        arr = np.asarray(Image.open(f))
        assert arr.shape == (90, 130) and set(np.unique(arr)) <= {0, 255} and np.array_equal(arr > 0, m)
    csv = open(files[-1]).read().splitlines()
    assert csv[0].startswith("image,prompt,colour,area_px") and len(csv) == 3


def test_run_examples_and_another_images_prompt(tiny_run):
    from vlsm.loading import load_trained
    loaded = load_trained(tiny_run["run_dir"])
    examples, note = run_examples(loaded.args)
    assert examples and not note and all(os.path.isfile(e.path) and e.prompts for e in examples)
    first = examples[0]
    image = read_example(first)
    assert image.rgb.dtype == np.uint8 and image.rgb.ndim == 3
    other = other_image_prompt(examples, first.label, first.prompts)
    assert other and other not in first.prompts
    assert run_examples({})[1].startswith("no dataset named")
    missing = run_examples(loaded.args, prompts_root=str(tiny_run["output_dir"]))
    assert missing[0] == [] and "not found" in missing[1]


def test_bench_app_reports_the_ratio_of_5_prompts_to_1(clipseg, capsys):
    r = bench_app(clipseg, "cpu", n_prompts=5, repeats=1, image_hw=(120, 160))
    assert r["n_prompts"] == 5 and r["ratio"] > 0 and r["separate_ratio"] > 0
    assert "5 prompts" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the run folder


def test_a_run_folder_without_weights_is_one_line_and_the_page_keeps_its_model(tiny_run, tmp_path):
    from vlsm.app.ui import AppModel, Holder, describe_loaded
    from vlsm.loading import load_trained
    empty = tmp_path / "run_without_weights"
    empty.mkdir()
    (empty / "args.json").write_text("{}")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "app.py"), "--checkpoint", str(empty), "--device",
                           "cpu"], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "VLSM_DEBUG": ""},
                          timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1 and "no best.pth" in errors[0], proc.stderr

    loaded = load_trained(tiny_run["run_dir"])
    first = AppModel(loaded, "cpu", describe_loaded(loaded))
    holder = Holder(first, lambda path: AppModel(load_trained(path), "cpu", "other"))
    with pytest.raises(FileNotFoundError, match="no best.pth"):
        holder.swap(str(empty))
    assert holder.current is first  # the page keeps serving with the model it had
