"""The custom-dataset wizard (``python -m datasets.make_manifest``), the user dataset registry, the shared
pair validation (also used by ``datasets.prepare``) and manifest names that must stay inside their folders.

The end-to-end test takes 20 real Kvasir-SEG pairs from ../shared/data (skipped when absent), breaks three of
them, and runs make_manifest -> training -> scoring on the registered dataset.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from datasets import build_dataset
from datasets.make_manifest import get_args_parser, main, split_counts
from datasets.manifest import ManifestError, load_manifest
from datasets.registry import dataset_names, get_dataset, parse_names
from util.errors import run_cli

KVASIR = os.path.join(SHARED_DATA, "kvasir_seg")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def wizard(*argv):
    return main(get_args_parser().parse_args([str(a) for a in argv]))


# ------------------------------------------------------------------------------------- real Kvasir folder
@pytest.fixture(scope="module")
def kvasir_user_folder(tmp_path_factory):
    """20 Kvasir pairs: 3 images re-encoded as PNG (masks as <stem>_mask.png), 2 JPEGs renamed .png, one
    mask of the wrong size, one image without a mask, one truncated image."""
    if not os.path.isdir(os.path.join(KVASIR, "images")):
        pytest.skip(f"real Kvasir-SEG not available in {KVASIR}")
    root = tmp_path_factory.mktemp("user_kvasir")
    img_dir, mask_dir = root / "raw" / "images", root / "raw" / "masks"
    img_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    names = sorted(os.listdir(os.path.join(KVASIR, "images")))[:20]
    bad = {}
    for i, name in enumerate(names):
        stem = os.path.splitext(name)[0]
        src_img, src_mask = os.path.join(KVASIR, "images", name), os.path.join(KVASIR, "masks", name)
        if i < 3:  # re-encoded PNG image, PNG mask with a suffix
            Image.open(src_img).save(img_dir / f"{stem}.png")
            Image.open(src_mask).convert("L").save(mask_dir / f"{stem}_mask.png")
        elif i < 5:  # JPEG bytes under a .png name
            shutil.copyfile(src_img, img_dir / f"{stem}.png")
            shutil.copyfile(src_mask, mask_dir / name)
        else:
            shutil.copyfile(src_img, img_dir / name)
            shutil.copyfile(src_mask, mask_dir / name)
    small = Image.open(mask_dir / names[6])
    small.resize((small.width // 2, small.height // 2)).save(mask_dir / names[6])
    bad["size"] = str(mask_dir / names[6])
    os.remove(mask_dir / names[7])
    bad["no_mask"] = str(img_dir / names[7])
    data = (img_dir / names[8]).read_bytes()
    (img_dir / names[8]).write_bytes(data[: len(data) // 2])
    bad["truncated"] = str(img_dir / names[8])
    return root, img_dir, mask_dir, bad


@pytest.fixture(scope="module")
def made(kvasir_user_folder):
    root, img_dir, mask_dir, bad = kvasir_user_folder
    data_root, prompts_root = root / "data", root / "prompts_json"
    report = wizard("--images", img_dir, "--masks", mask_dir, "--name", "mydata", "--class-name", "polyp",
                    "--split", "80/10/10", "--seed", "0", "--data-root", data_root, "--prompts-root", prompts_root)
    return report, str(data_root), str(prompts_root), bad


def test_kvasir_folder_bad_files_reported_and_17_records(made, capsys):
    report, data_root, prompts_root, bad = made
    rejected = {r["file"]: r["reason"] for r in report["rejected"]}
    assert set(rejected) == set(bad.values())
    assert "is truncated" in rejected[bad["truncated"]]
    assert "image without mask" in rejected[bad["no_mask"]]
    assert "(WxH) but its image" in rejected[bad["size"]]
    assert report["records"] == 17 and report["splits"] == {"train": 13, "val": 2, "test": 2}
    records = []
    for sp in ("train", "val", "test"):
        records += load_manifest(os.path.join(prompts_root, "mydata", f"{sp}.json"))
    assert len(records) == 17 and len({r["img_name"] for r in records}) == 17
    for r in records:  # copied where the loader looks; bad files never copied
        assert os.path.isfile(os.path.join(data_root, "mydata", "images", r["img_name"]))
        assert os.path.isfile(os.path.join(data_root, "mydata", "masks", r["mask_name"]))
        assert r["prompts"]["p1"] == "polyp" and r["prompts"]["p0"] == ""
        assert len(r["prompts"]["p7"]) == 5  # the paper's five polyp descriptions
    names = {os.path.basename(p) for p in bad.values()}
    copied = set(os.listdir(os.path.join(data_root, "mydata", "images"))) | set(
        os.listdir(os.path.join(data_root, "mydata", "masks")))
    assert not names & copied
    png = [r for r in records if r["mask_name"].endswith("_mask.png")]
    assert len(png) == 3 and all(r["img_name"] == r["mask_name"].replace("_mask", "") for r in png)
    saved = json.load(open(os.path.join(data_root, "mydata", "make_manifest_report.json")))
    assert len(saved["rejected"]) == 3
    info = get_dataset("mydata", data_root)
    assert info.class_name == "polyp" and info.splits == ("train", "val", "test")
    assert "mydata" in dataset_names(data_root=data_root) and parse_names("mydata,kvasir", data_root)


def test_prompts_are_those_of_make_prompts(made):
    import make_prompts
    _, data_root, prompts_root, _ = made
    redone = make_prompts.main(SimpleNamespace(data="mydata", data_root=data_root, prompts_root=prompts_root,
                                               splits="train,val,test", seed=0, stats=False, dry_run=True, vqa=None))
    for sp, recs in redone.items():
        written = load_manifest(os.path.join(prompts_root, "mydata", f"{sp}.json"))
        assert [r["prompts"] for r in recs] == [r["prompts"] for r in written]
        assert [r["attributes"] for r in recs] == [r["attributes"] for r in written]
    some = written[0]
    assert some["attributes"]["number"] in ("one", "two", "three") and some["bbox"] is not None
    assert some["prompts"]["p5"].startswith(some["attributes"]["number"] + " ")


def test_train_and_score_on_the_registered_dataset(made, tmp_path):
    import torch

    from models import model_from_checkpoint
    from vlsm.scoring import score
    from vlsm.training import default_args, run_training
    _, data_root, prompts_root, _ = made
    res = run_training(default_args(data="mydata", size="tiny", model="clipseg", epochs=1, max_steps_per_epoch=2,
                                    batch_size=4, input_size=64, workers=0, data_root=data_root,
                                    prompts_root=prompts_root, output_dir=str(tmp_path / "runs")))
    assert res["test"]["n"] == 2 and 0.0 <= res["test"]["dice_mean"] <= 1.0
    model, _ = model_from_checkpoint(res["run_dir"])
    again = score(model, "mydata", "test", "p1", 0.5, torch.device("cpu"), out=str(tmp_path / "eval"),
                  data_root=data_root, prompts_root=prompts_root, quiet=True)
    assert again["n"] == 2 and again["dice_mean"] == pytest.approx(res["test"]["dice_mean"], abs=1e-6)
    with open(os.path.join(again["results_dir"], "per_image.csv")) as f:
        assert len(list(csv.DictReader(f))) == 2


def test_check_passes_then_finds_problems(made, capsys, tmp_path):
    _, data_root, prompts_root, _ = made
    out = wizard("--check", "--name", "mydata", "--data-root", data_root, "--prompts-root", prompts_root)
    assert out["problems"] == [] and out["records"] == {"train": 13, "val": 2, "test": 2}
    assert out["prompt_keys"] == [f"p{i}" for i in range(10)]
    # a copy with an image in two splits and a broken image: both named, exit status 2, nothing written
    data2, prompts2 = tmp_path / "data", tmp_path / "pj"
    shutil.copytree(data_root, data2)
    shutil.copytree(prompts_root, prompts2)
    train = json.load(open(prompts2 / "mydata" / "train.json"))
    test = json.load(open(prompts2 / "mydata" / "test.json"))
    json.dump(test + train[:1], open(prompts2 / "mydata" / "test.json", "w"))
    broken = data2 / "mydata" / "images" / train[1]["img_name"]
    broken.write_bytes(broken.read_bytes()[:200])
    before = sorted(os.listdir(prompts2 / "mydata"))
    with pytest.raises(SystemExit) as e:
        run_cli(main, get_args_parser(), ["--check", str(prompts2 / "mydata"), "--data-root", str(data2)])
    assert e.value.code == 2
    text = capsys.readouterr()
    assert "2 problems" in text.out and "is also in train.json" in text.out and train[1]["img_name"] in text.out
    assert sorted(os.listdir(prompts2 / "mydata")) == before


def test_existing_dataset_needs_overwrite(made, kvasir_user_folder):
    _, img_dir, mask_dir, _ = kvasir_user_folder
    _, data_root, prompts_root, _ = made
    with pytest.raises(FileExistsError, match="--overwrite"):
        wizard("--images", img_dir, "--masks", mask_dir, "--name", "mydata", "--data-root", data_root,
               "--prompts-root", prompts_root)


# ------------------------------------------------------------------------------------------ small folders
def _pair(img_dir, mask_dir, stem, box, size=(40, 48), mask_stem=None, ext=".png"):
    h, w = size
    img = np.full((h, w, 3), 70, np.uint8)
    m = np.zeros((h, w), np.uint8)
    y1, x1, y2, x2 = box
    m[y1:y2, x1:x2] = 255
    img[m > 0] = (200, 40, 40)
    for d, name in ((img_dir, stem + ext), (mask_dir, (mask_stem or stem) + ".png")):
        os.makedirs(os.path.dirname(os.path.join(d, name)), exist_ok=True)
    Image.fromarray(img).save(os.path.join(img_dir, stem + ext))
    Image.fromarray(m).save(os.path.join(mask_dir, (mask_stem or stem) + ".png"))


def test_csv_prompts_subfolders_and_masks_beside_images(tmp_path):
    src = str(tmp_path / "src")  # one folder: masks carry "_seg"; names keep their subfolders
    for i in range(6):
        _pair(src, src, f"case{i % 2}/img{i}", (5 + i, 6, 20 + i, 30), mask_stem=f"case{i % 2}/img{i}_seg")
    _pair(src, src, "case0/empty", (0, 0, 0, 0), mask_stem="case0/empty_seg")
    table = tmp_path / "prompts.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "prompt"])
        for i in range(5):  # img5 has no row: rejected
            w.writerow([f"img{i}.png" if i % 2 else f"case{i % 2}/img{i}", f"red lesion {i}"])
        w.writerow(["case0/img0", "a red box"])  # a second prompt for img0: a list
        w.writerow(["ghost.png", "nothing"])
        w.writerow(["case0/empty", "no lesion"])
    data, pj = tmp_path / "data", tmp_path / "pj"
    report = wizard("--images", src, "--masks", src, "--name", "lesions", "--prompts", table, "--split", "60/40",
                    "--data-root", data, "--prompts-root", pj, "--link")
    reasons = {os.path.relpath(r["file"], src): r["reason"] for r in report["rejected"]}
    assert set(reasons) == {"case1/img5.png", "case0/empty_seg.png"}
    assert "no row for this image" in reasons["case1/img5.png"] and "--allow-empty" in reasons["case0/empty_seg.png"]
    assert report["csv_rows_without_image"] == ["line 8: 'ghost.png'", "line 9: 'case0/empty'"]
    assert report["splits"] == {"train": 3, "val": 2} and not (pj / "lesions" / "test.json").exists()
    recs = {r["img_name"]: r for sp in ("train", "val") for r in load_manifest(str(pj / "lesions" / f"{sp}.json"))}
    assert recs["case0/img0.png"]["prompts"] == {"p0": "", "p1": ["red lesion 0", "a red box"]}
    assert recs["case1/img3.png"]["prompts"] == {"p0": "", "p1": "red lesion 3"}
    assert recs["case1/img3.png"]["mask_name"] == "case1/img3_seg.png"
    assert os.path.islink(data / "lesions" / "images" / "case1" / "img3.png")
    ds = build_dataset("lesions", "val", prompt="p1", data_root=str(data), prompts_root=str(pj), input_size=32,
                       mean=MEAN, std=STD)
    assert len(ds) == 2 and ds[0]["mask"].shape[-2:] == (32, 32)
    with pytest.raises(ValueError, match="has no 'test' split|none of"):
        build_dataset("lesions", "test", data_root=str(data), prompts_root=str(pj), input_size=32, mean=MEAN,
                      std=STD)
    # --allow-empty keeps the empty mask (computed prompts: "no <class>")
    rep2 = wizard("--images", src, "--masks", src, "--name", "lesions2", "--allow-empty", "--class-name", "lesion",
                  "--data-root", data, "--prompts-root", pj, "--dry-run")
    assert rep2["records"] == 7 and rep2["empty_masks"] == 1 and rep2["rejected"] == []
    assert not (data / "lesions2").exists()


def test_nothing_usable_exits_2_and_clear_errors(tmp_path, capsys):
    img_dir, mask_dir = tmp_path / "i", tmp_path / "m"
    _pair(str(img_dir), str(mask_dir), "a", (2, 2, 10, 10))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(mask_dir / "a.png")  # wrong size
    argv = ["--images", str(img_dir), "--masks", str(mask_dir), "--name", "x", "--data-root", str(tmp_path / "d"),
            "--prompts-root", str(tmp_path / "p")]
    with pytest.raises(SystemExit) as e:
        run_cli(main, get_args_parser(), argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert "nothing usable left for 'x'" in captured.err and "a.png is 5x5 (WxH)" in captured.out
    assert not (tmp_path / "d").exists() and not (tmp_path / "p").exists()
    with pytest.raises(ValueError, match="is a built-in dataset"):
        wizard("--images", img_dir, "--masks", mask_dir, "--name", "kvasir")
    with pytest.raises(ValueError, match="--split"):
        wizard("--images", img_dir, "--masks", mask_dir, "--name", "y", "--split", "80/x")
    with pytest.raises(FileNotFoundError, match="--masks"):
        wizard("--images", img_dir, "--masks", tmp_path / "none", "--name", "y", "--dry-run")


def test_split_counts_rule():
    assert split_counts(17, {"train": 80, "val": 10, "test": 10}) == {"train": 13, "val": 2, "test": 2}
    assert split_counts(100, {"train": 80, "val": 10, "test": 10}) == {"train": 80, "val": 10, "test": 10}
    assert split_counts(5, {"train": 80, "val": 10, "test": 10}) == {"train": 3, "val": 1, "test": 1}
    assert split_counts(2, {"train": 80, "val": 10, "test": 10}) == {"train": 2, "val": 0, "test": 0}


# ------------------------------------------------------------------------------------------------ registry
def test_registry_entries_are_checked(tmp_path):
    path = tmp_path / "datasets.json"
    path.write_text(json.dumps({"datasets": {"kvasir": {"class_name": "polyp"}}}))
    with pytest.raises(ValueError, match="built-in dataset name"):
        get_dataset("mine", str(tmp_path))
    path.write_text(json.dumps({"datasets": {"mine": {"class_name": "cyst", "splits": ["train", "dev"]}}}))
    with pytest.raises(ValueError, match=r"entry 'mine': 'splits'"):
        get_dataset("mine", str(tmp_path))
    path.write_text(json.dumps({"datasets": {"mine": {"class_name": "cyst", "splits": ["test"]}}}))
    assert get_dataset("mine", str(tmp_path)).splits == ("test",)
    with pytest.raises(ValueError, match=r"unknown dataset 'other'.*registered in .*datasets.json: mine"):
        parse_names("mine,other", str(tmp_path))
    with pytest.raises(ValueError, match="unknown dataset 'mine'"):
        get_dataset("mine")  # without a data root only the built-ins
    path.write_text("{not json")
    with pytest.raises(ValueError, match="datasets.json is unreadable"):
        get_dataset("mine", str(tmp_path))


# ---------------------------------------------------------------------------------------- manifest names
@pytest.mark.parametrize("name", ["../secret.png", "a/../../b.png", "/etc/passwd", "..\\x.png", "C:/x.png", ""])
def test_manifest_names_must_stay_inside_their_folder(tmp_path, name):
    path = tmp_path / "m.json"
    recs = [{"img_name": "ok.png", "mask_name": "ok.png", "prompts": {"p1": "x"}},
            {"img_name": "b.png", "mask_name": name, "prompts": {"p1": "x"}}]
    path.write_text(json.dumps(recs))
    with pytest.raises(ManifestError, match=r"record 1: mask_name .* absolute or climbs out"):
        load_manifest(str(path))


def test_manifest_names_with_subfolders_are_kept(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"img_name": "case1/a..b.png", "mask_name": "case1/sub/a.png", "prompts": {}}]))
    assert load_manifest(str(path))[0]["mask_name"] == "case1/sub/a.png"


# ------------------------------------------------------------------------------------------ prepare shares
def test_prepare_leaves_out_an_undecodable_image(tmp_path, capsys):
    from datasets.prepare import prepare
    src = tmp_path / "src"
    for i in range(5):
        _pair(str(src / "images"), str(src / "masks"), f"img{i}", (3, 3, 20, 20), ext=".jpg")
    broken = src / "images" / "img2.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    lines = []
    summary = prepare("kvasir", str(src), str(tmp_path / "data"), str(tmp_path / "pj"), log=lines.append)
    assert len(summary["rejected"]) == 1 and str(broken) in summary["rejected"][0]
    assert "truncated" in summary["rejected"][0].lower() and "--on-bad-sample" not in summary["rejected"][0]
    assert sum(summary["records"].values()) == 4
    assert "img2.jpg" not in os.listdir(tmp_path / "data" / "kvasir" / "images")
    assert any("left out 1 pairs" in line for line in lines)
