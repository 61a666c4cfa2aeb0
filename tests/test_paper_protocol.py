"""The paper's protocol: random prompts, CNNs on multi-target data (--target / --multiclass), CheXlocalize's
"present" pathologies and split, CAMUS's split.  Tiny replicas in the paper's own names (no real data)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from datasets import build_dataset
from datasets.manifest import ManifestDataset, eval_prompt_key, nonempty_keys
from datasets.targets import filter_target, record_target, targets_of
from datasets.transforms import SegTransform
from vlsm.training import default_args, run_training

W = H = 48
STRUCTURES = ("left ventricular cavity", "myocardium", "left atrium cavity")


def camus_replica(root, patients=(("train", 1, 6), ("val", 7, 8), ("test", 9, 10))):
    """A CAMUS-shaped dataset in the paper's names: images/<part>/<stem>.png, masks/<part>/mask_<k>/<stem>_gt.png,
    three records per image (one per structure), records without class_name (as released)."""
    data, pj = root / "data", root / "prompts_json"
    rng = np.random.default_rng(0)
    for split, first, last in patients:
        part = "test" if split == "test" else "train"
        recs = []
        for p in range(first, last + 1):
            stem = f"patient{p:04d}_2CH_ED"
            img = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
            labels = np.zeros((H, W), np.uint8)
            labels[10:30, 12:30], labels[14:26, 16:26], labels[30:42, 12:30] = 2, 1, 3
            img[labels == 1] += 150
            img[labels == 2] += 90
            (data / "camus" / "images" / part).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(data / "camus" / "images" / part / f"{stem}.png")
            for k in (1, 2, 3):
                d = data / "camus" / "masks" / part / f"mask_{k}"
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray((labels == k).astype(np.uint8) * 255).save(d / f"{stem}_gt.png")
                recs.append({"img_name": f"{part}/{stem}.png", "mask_name": f"{part}/mask_{k}/{stem}_gt.png",
                             "prompts": {"p0": "", "p1": [f"{STRUCTURES[k - 1].capitalize()} of the heart."]}})
        (pj / "camus").mkdir(parents=True, exist_ok=True)
        (pj / "camus" / f"{split}.json").write_text(json.dumps(recs))
    return str(data), str(pj)


def train_tiny(root, model, **kw):
    data, pj = camus_replica(root)
    return run_training(default_args(model=model, data="camus", size="tiny", weights="none", data_root=data,
                                     prompts_root=pj, output_dir=str(root / "runs"), workers=0, epochs=1,
                                     max_steps_per_epoch=2, batch_size=4, input_size=32, no_cache=True, **kw))


# --------------------------------------------------------------------------------------------- random prompts
def test_random_prompt_never_p0_and_validation_is_fixed(tmp_path):
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks")
    recs = []
    for i in range(30):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "masks" / f"{i}.png")
        recs.append({"img_name": f"{i}.png", "mask_name": f"{i}.png",
                     "prompts": {"p0": "", "p1": "polyp", "p2": "round polyp", "p7": ["polyp which", "a lump"]}})
    tf = SegTransform(8, (0.5,) * 3, (0.5,) * 3)

    def ds(train):
        return ManifestDataset(recs, str(tmp_path / "images"), str(tmp_path / "masks"), prompt="random",
                               transform=tf, train=train)
    train_keys = {ds(True)[i % 30]["prompt_key"] for i in range(200)}
    assert train_keys == {"p1", "p2", "p7"}                       # every non-empty key, never P0
    val = [(it["prompt_key"], it["text"]) for it in (ds(False)[i] for i in range(30))]
    again = [(it["prompt_key"], it["text"]) for it in (ds(False)[i] for i in range(30))]
    assert val == again and "p0" not in {k for k, _ in val} and len({k for k, _ in val}) > 1
    assert all(eval_prompt_key(r, nonempty_keys(r["prompts"])) == k for r, (k, _) in zip(recs, val))
    assert ds(False)[0]["prompt_key"] == val[0][0]                # the same in every epoch / new loader
    fixed = ManifestDataset(recs, str(tmp_path / "images"), str(tmp_path / "masks"), prompt="p7", transform=tf)
    assert fixed[3]["prompt_key"] == "p7" and fixed[3]["text"] == "polyp which"


# ------------------------------------------------------------------------------------------- multi-target data
def test_targets_from_the_paper_names_and_unknown_target_lists_classes(tmp_path):
    data, pj = camus_replica(tmp_path)
    recs = json.load(open(os.path.join(pj, "camus", "train.json")))
    assert [record_target(r) for r in recs[:3]] == list(STRUCTURES)
    assert targets_of(recs) == list(STRUCTURES)
    assert record_target({"img_name": "p_study1_view1_frontal.jpg", "mask_name": "p_study1_view1_frontal_lung_"
                          "lesion.png"}) == "Lung Lesion"
    assert record_target({"img_name": "ISIC_1.jpg", "mask_name": "ISIC_1_Segmentation.png"}) is None
    assert len(filter_target(recs, "myo")) == len(filter_target(recs, "Myocardium")) == 6
    with pytest.raises(ValueError, match="'left ventricular cavity', 'myocardium', 'left atrium cavity'"):
        filter_target(recs, "aorta")


def test_text_free_model_on_multi_target_data_needs_target_or_multiclass(tmp_path):
    with pytest.raises(ValueError, match="--target CLASS .*--multiclass"):
        train_tiny(tmp_path, "unet")


def test_cnn_per_class_with_target(tmp_path):
    res = train_tiny(tmp_path, "unet", target="myo")
    assert res["test"]["n"] == 2 and res["test"]["target"] == "myo"     # the test records of that class only
    rows = open(os.path.join(res["test"]["results_dir"], "per_image.csv")).read()
    assert "mask_2/" in rows and "mask_1/" not in rows


def test_cnn_multiclass_one_channel_per_class(tmp_path):
    import torch

    from models import model_from_checkpoint
    res = train_tiny(tmp_path, "deeplabv3plus", multiclass=True)
    model, ckpt = model_from_checkpoint(res["run_dir"])
    assert list(model.class_names) == list(STRUCTURES) and ckpt["build_args"]["class_names"] == list(STRUCTURES)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 3, 32, 32)                              # training: every class at once
    picked = model(x, target_index=torch.tensor([2, 0]))
    assert torch.equal(picked[:, 0], torch.stack([model(x)[0, 2], model(x)[1, 0]]))
    assert res["test"]["n"] == 6                                          # scored per record, on its class
    # the training set: one item per image, a mask channel per class
    data = str(tmp_path / "data")
    ds = build_dataset("camus", "train", model=model, train=True, data_root=data,
                       prompts_root=str(tmp_path / "prompts_json"), per_image=True)
    item = ds[0]
    assert len(ds) == 6 and item["mask"].shape == (3, 32, 32) and (item["mask"].sum((1, 2)) > 0).all()


def test_multiclass_is_for_text_free_models(tmp_path):
    with pytest.raises(ValueError, match="--multiclass is for the text-free models"):
        train_tiny(tmp_path, "clipseg", multiclass=True)


# ------------------------------------------------------------------------------------------------ converters
def _chexlocalize(root):
    from pycocotools import mask as mask_utils
    m = np.zeros((30, 40), np.uint8)
    m[3:10, 3:12] = 1
    rle = {"size": [30, 40], "counts": mask_utils.encode(np.asfortranarray(m))["counts"].decode()}
    for split, first in (("val", 64541), ("test", 64741)):
        seg = {}
        for i in range(4):
            pid = f"patient{first + i}"
            d = root / "CheXpert" / split / pid / "study1"
            d.mkdir(parents=True)
            Image.fromarray(np.full((30, 40), 100, np.uint8)).save(d / "view1_frontal.jpg")
            seg[f"{pid}_study1_view1_frontal"] = {"Airspace Opacity": rle, "Edema": rle}
        (root / f"gt_segmentations_{split}.json").write_text(json.dumps(seg))
    cols = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Edema"
    rows = [f"CheXpert-v1.0/valid/patient{64541 + i}/study1/view1_frontal.jpg,Male,60,Frontal,AP,0,1,0,1,1"
            for i in range(4)]
    (root / "val_labels.csv").write_text("\n".join([cols] + rows) + "\n")
    return root / "val_labels.csv"


def test_chexlocalize_present_pathologies_from_labels_or_masks(tmp_path):
    from datasets.prepare import prepare
    labels = _chexlocalize(tmp_path / "src")
    prepare("chexlocalize", str(tmp_path / "src"), str(tmp_path / "d"), str(tmp_path / "p"), log=lambda *a: None,
            labels=[str(labels)])
    recs = [r for s in ("train", "val", "test") if (tmp_path / "p" / "chexlocalize" / f"{s}.json").exists()
            for r in json.load(open(tmp_path / "p" / "chexlocalize" / f"{s}.json"))]
    by_patient = {r["patient"]: r for r in recs}
    val = by_patient["patient64541"]     # labelled: positive observations in column order, "No Finding" left out
    assert val["pathology"] == ["Enlarged Cardiomediastinum", "Lung Opacity", "Edema"]
    assert val["pathology_source"] == "chexpert labels (val_labels.csv)" and val["official_split"] == "val"
    test = by_patient["patient64741"]    # not in the labels file: from its masks
    assert test["pathology"] == ["Airspace Opacity", "Edema"] and test["pathology_source"] == "masks"
    assert {r["official_split"] for r in recs} == {"val", "test"} and len(recs) == 16


def test_camus_2019_layout_split_as_the_paper(tmp_path):
    import SimpleITK as sitk

    from datasets.prepare import prepare
    for part, n in (("training", 9), ("testing", 2)):
        for p in range(1, n + 1):
            d = tmp_path / "CAMUS" / part / f"patient{p:04d}"
            d.mkdir(parents=True)
            for view in ("2CH", "4CH"):
                (d / f"Info_{view}.cfg").write_text("Sex: F\nAge: 60\nImageQuality: Good\n")
                for cyc in ("ED", "ES"):
                    gt = np.zeros((20, 20), np.uint8)
                    gt[2:8, 2:8], gt[8:12, 2:8], gt[12:18, 2:8] = 1, 2, 3
                    sitk.WriteImage(sitk.GetImageFromArray(np.full((20, 20), 50, np.uint8)),
                                    str(d / f"patient{p:04d}_{view}_{cyc}.mhd"))
                    sitk.WriteImage(sitk.GetImageFromArray(gt), str(d / f"patient{p:04d}_{view}_{cyc}_gt.mhd"))
    summary = prepare("camus", str(tmp_path / "CAMUS"), str(tmp_path / "d"), str(tmp_path / "p"), log=lambda *a: None)
    split = {s: json.load(open(tmp_path / "p" / "camus" / f"{s}.json")) for s in ("train", "val", "test")}
    assert {r["patient"] for r in split["val"]} == {"patient0001"}     # the first 50/450 of the training patients
    assert {r["release_part"] for r in split["test"]} == {"testing"} and summary["records"]["test"] == 24
    assert split["test"][0]["img_name"].startswith("test/") and split["train"][0]["img_name"].startswith("train/")
    assert os.path.isfile(tmp_path / "d" / "camus" / "masks" / split["test"][0]["mask_name"])
