"""Dataset preparation: tiny replicas of each official layout, converted and checked.

Each test writes a few generated images in the release's real formats and names (JPEG, PNG, TIFF,
MHD/raw and NIfTI via SimpleITK, COCO RLE JSON via pycocotools) into ``tmp_path`` and checks the
files, mask values, bboxes, manifests, split counts and metadata produced by ``datasets.prepare``.
The last tests run the Kvasir and ClinicDB converters on the real data in ../shared/data
(VLSM_SHARED_DATA) when present.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from datasets.converters.common import PrepareError
from datasets.io import read_mask as load_mask
from datasets.prepare import PAPER_COUNTS, get_args_parser, main, prepare, scaled_counts
from util.errors import run_cli

W, H = 40, 30
from conftest import SHARED_DATA as SHARED  # noqa: E402


# ---------------------------------------------------------------------------------------------- helpers
def rgb_image(seed: int, w: int = W, h: int = H) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def box_mask(x1, y1, x2, y2, w=W, h=H, value=255) -> np.ndarray:
    """uint8 mask with ``value`` on the inclusive box [x1, y1, x2, y2]."""
    m = np.zeros((h, w), np.uint8)
    m[y1:y2 + 1, x1:x2 + 1] = value
    return m


def box_for(i: int) -> tuple:
    return (2 + i % 5, 3 + i % 4, 20 + i % 7, 15 + i % 6)


def run(name, src, tmp_path, **kw):
    data, prompts = tmp_path / "data", tmp_path / "prompts"
    summary = prepare(name, str(src), str(data), str(prompts), log=lambda *a: None, **kw)
    return summary, data / name, prompts / name


def manifest(prompts_dir, split):
    with open(prompts_dir / f"{split}.json") as f:
        return json.load(f)


def read_mask(path) -> np.ndarray:
    arr = np.asarray(Image.open(path))
    assert arr.ndim == 2, f"{path} is not single-channel"
    assert set(np.unique(arr).tolist()) <= {0, 255}, f"{path} is not 0/255"
    return arr == 255


def all_records(prompts_dir, splits=("train", "val", "test")):
    return [r for s in splits if (prompts_dir / f"{s}.json").exists() for r in manifest(prompts_dir, s)]


def make_pairs(img_dir, mask_dir, n, img_ext=".jpg", mask_ext=".jpg", mask_name=lambda s: s, stem=lambda i: f"img{i}"):
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    for i in range(n):
        rgb_image(i).save(os.path.join(img_dir, stem(i) + img_ext), quality=95)
        m = box_mask(*box_for(i))
        Image.fromarray(np.stack([m] * 3, -1)).save(os.path.join(mask_dir, mask_name(stem(i)) + mask_ext), quality=90)


# ------------------------------------------------------------------------------------------ split rule
def test_scaled_counts_rule():
    assert scaled_counts(1000, (800, 100, 100)) == (800, 100, 100)
    assert scaled_counts(612, (490, 61, 61)) == (490, 61, 61)
    assert scaled_counts(10, (800, 100, 100)) == (8, 1, 1)
    assert scaled_counts(780, (624, 78, 78)) == (624, 78, 78)
    assert scaled_counts(100, (624, 78, 78)) == (80, 10, 10)
    assert scaled_counts(900, (810, 90)) == (810, 90)
    assert scaled_counts(500, PAPER_COUNTS["camus"]) == (400, 50, 50)
    assert sum(scaled_counts(37, (490, 61, 61))) == 37


# -------------------------------------------------------------------------------------------- polyps
def test_kvasir_jpeg_layout(tmp_path):
    src = tmp_path / "Kvasir-SEG"
    make_pairs(src / "images", src / "masks", 10)
    summary, out, pj = run("kvasir", tmp_path, tmp_path)   # found one level below --src
    assert summary["images"] == {"train": 8, "val": 1, "test": 1}
    recs = all_records(pj)
    assert sorted(r["img_name"] for r in recs) == sorted(f"img{i}.jpg" for i in range(10))
    for r in recs:
        i = int(r["img_name"][3:-4])
        assert r["mask_name"] == f"img{i}.jpg" and r["prompts"] == {"p0": "", "p1": "polyp"}  # the paper's name
        assert r["cat"] == 1 and r["segment_id"] == 0 and r["sentences"] == [] and r["class_name"] == "polyp"
        m = load_mask(str(out / "masks" / r["mask_name"]))   # the JPEG mask, copied, read by the loader's rule
        assert (out / "masks" / r["mask_name"]).read_bytes() == (src / "masks" / r["mask_name"]).read_bytes()
        assert r["bbox"] == list(box_for(i))
        assert m.sum() == np.asarray(box_mask(*box_for(i)) > 0).sum()  # JPEG noise removed by >= 128
        # JPEG images are copied byte for byte
        assert (out / "images" / r["img_name"]).read_bytes() == (src / "images" / r["img_name"]).read_bytes()


def test_rerun_same_seed_is_identical_and_changes_need_overwrite(tmp_path):
    src = tmp_path / "src"
    make_pairs(src / "images", src / "masks", 10)
    _, _, pj = run("kvasir", src, tmp_path)
    texts = lambda: {s: (pj / f"{s}.json").read_text() for s in ("train", "val", "test")}  # noqa: E731
    first = texts()
    run("kvasir", src, tmp_path)                       # same seed: identical manifests, accepted
    assert texts() == first
    with pytest.raises(PrepareError, match="--overwrite"):
        run("kvasir", src, tmp_path, seed=1)           # another split would replace the saved one
    assert texts() == first
    run("kvasir", src, tmp_path, seed=1, overwrite=True)
    assert texts() != first
    assert sorted(r["img_name"] for s in ("train", "val", "test") for r in manifest(pj, s)) == \
        sorted(f"img{i}.jpg" for i in range(10))


def test_prepared_dataset_loads_with_manifest_dataset(tmp_path):
    from datasets.manifest import ManifestDataset
    src = tmp_path / "src"
    make_pairs(src / "images", src / "masks", 10)
    _, out, pj = run("kvasir", src, tmp_path)
    ds = ManifestDataset(str(pj / "train.json"), str(out / "images"), str(out / "masks"), prompt="p1")
    item = ds[0]
    i = int(item["name"][3:-4])
    assert item["text"] == "polyp" and item["mask"].shape == (H, W)
    assert int(item["mask"].sum()) == int((box_mask(*box_for(i)) > 0).sum())


def test_clinicdb_tiff_layout_converted_to_png(tmp_path):
    src = tmp_path / "CVC-ClinicDB"
    make_pairs(src / "Original", src / "Ground Truth", 12, img_ext=".tif", mask_ext=".tif", stem=lambda i: str(i + 1))
    summary, out, pj = run("clinicdb", src, tmp_path)
    assert summary["images"] == dict(zip(("train", "val", "test"), scaled_counts(12, (490, 61, 61))))
    assert sorted(os.listdir(out / "images")) == sorted(f"{i + 1}.png" for i in range(12))
    img = np.asarray(Image.open(out / "images" / "3.png"))
    assert img.dtype == np.uint8 and img.shape == (H, W, 3)
    assert np.array_equal(img, np.asarray(rgb_image(2)))  # lossless TIFF -> PNG
    r = [r for r in all_records(pj) if r["img_name"] == "3.png"][0]
    assert r["bbox"] == list(box_for(2)) and read_mask(out / "masks" / "3.png").sum() > 0


def test_bkai_red_and_green_merged(tmp_path):
    src = tmp_path / "bkai-igh-neopolyp"
    (src / "train" / "train").mkdir(parents=True)
    (src / "train_gt" / "train_gt").mkdir(parents=True)
    (src / "test" / "test").mkdir(parents=True)
    for i in range(10):
        rgb_image(i).save(src / "train" / "train" / f"b{i}.jpeg", quality=95)
        m = np.zeros((H, W, 3), np.uint8)
        m[2:10, 2:12, 0] = 255                 # neoplastic (red)
        if i % 2:
            m[15:25, 20:35, 1] = 255           # non-neoplastic (green)
        Image.fromarray(m).save(src / "train_gt" / "train_gt" / f"b{i}.jpeg", quality=95)
    rgb_image(99).save(src / "test" / "test" / "t0.jpeg")
    summary, out, pj = run("bkai", src, tmp_path)
    assert summary["images"] == {"train": 8, "val": 1, "test": 1}
    assert any("test" in n and "no ground truth" in n for n in summary["notes"])
    for r in all_records(pj):
        i = int(r["img_name"][1:-5])
        assert r["mask_name"] == r["img_name"]            # the paper's name: the RGB mask copied as it is
        m = load_mask(str(out / "masks" / r["mask_name"]))
        expect = np.zeros((H, W), bool)
        expect[2:10, 2:12] = True
        if i % 2:
            expect[15:25, 20:35] = True
        assert (m & expect).sum() / (m | expect).sum() > 0.97     # JPEG noise at the edges only
        assert r["lesion_types"] == (["neoplastic", "non-neoplastic"] if i % 2 else ["neoplastic"])
        assert r["img_name"].endswith(".jpeg") and r["class_name"] == "polyp"


def test_etis_official_layout_test_only(tmp_path):
    src = tmp_path / "ETIS"
    make_pairs(src / "ETIS-LaribPolypDB", src / "GroundTruth", 4, img_ext=".tif", mask_ext=".tif",
               mask_name=lambda s: "p" + s, stem=lambda i: str(i + 1))
    summary, out, pj = run("etis", src, tmp_path)
    assert summary["images"] == {"test": 4}
    assert not (pj / "train.json").exists() and len(manifest(pj, "test")) == 4
    assert sorted(os.listdir(out / "masks")) == ["1.png", "2.png", "3.png", "4.png"]
    assert any("196" in n for n in summary["notes"])  # the count differs from the paper's: reported


def test_cvc300_equal_to_colondb_is_refused(tmp_path):
    colondb = tmp_path / "CVC-ColonDB"
    make_pairs(colondb / "images", colondb / "masks", 5, img_ext=".png", mask_ext=".png")
    summary, _, pj = run("colondb", colondb, tmp_path)
    assert summary["images"] == {"test": 5}
    with pytest.raises(PrepareError, match="identical to images of the prepared 'colondb'"):
        run("cvc300", colondb, tmp_path)
    cvc300 = tmp_path / "CVC-300"  # different pixels: accepted
    os.makedirs(cvc300 / "images")
    os.makedirs(cvc300 / "masks")
    for i in range(3):
        rgb_image(100 + i).save(cvc300 / "images" / f"{i}.png")
        Image.fromarray(box_mask(*box_for(i))).save(cvc300 / "masks" / f"{i}.png")
    summary, _, _ = run("cvc300", cvc300, tmp_path)
    assert summary["images"] == {"test": 3}


# ------------------------------------------------------------------------------------------ bad input
def test_unknown_layout_lists_expected_and_found(tmp_path):
    (tmp_path / "src" / "pictures").mkdir(parents=True)
    (tmp_path / "src" / "readme.txt").write_text("x")
    with pytest.raises(PrepareError) as e:
        run("kvasir", tmp_path / "src", tmp_path)
    msg = str(e.value)
    assert "expected: images/ + masks/" in msg and "pictures/" in msg and "readme.txt" in msg


def test_unpaired_error_by_default_and_skip_with_summary(tmp_path, capsys):
    src = tmp_path / "src"
    make_pairs(src / "images", src / "masks", 6)
    rgb_image(50).save(src / "images" / "lonely.jpg")
    Image.fromarray(box_mask(1, 1, 5, 5)).save(src / "masks" / "orphan.jpg")
    with pytest.raises(PrepareError) as e:
        run("kvasir", src, tmp_path)
    assert "2 unpaired" in str(e.value) and "lonely.jpg" in str(e.value) and "orphan.jpg" in str(e.value)
    assert "--skip-unpaired" in str(e.value)
    rc = main(get_args_parser().parse_args(["kvasir", "--src", str(src), "--data-root", str(tmp_path / "d"),
                                            "--prompts-root", str(tmp_path / "p"), "--skip-unpaired"]))
    out = capsys.readouterr().out
    assert rc == 0 and "skipping 2 unpaired" in out and "lonely.jpg" in out
    names = {r["img_name"] for r in all_records(tmp_path / "p" / "kvasir")}
    assert len(names) == 6 and "lonely.jpg" not in names


def test_mask_size_mismatch_names_the_file(tmp_path):
    src = tmp_path / "src"
    make_pairs(src / "images", src / "masks", 3)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(src / "masks" / "img1.jpg")
    with pytest.raises(PrepareError, match=r"img1\.jpg is 10x10 \(WxH\) but its image .*img1\.jpg is 40x30"):
        run("kvasir", src, tmp_path)
    assert not (tmp_path / "prompts" / "kvasir").exists()  # nothing half-written


def test_cli_error_exit_code(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(main, get_args_parser(), ["kvasir", "--src", str(tmp_path / "missing")])
    assert e.value.code == 2
    assert "is not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- ISIC/DFU
def test_isic_official_split_and_val_from_train(tmp_path):
    root = tmp_path / "isic2016"
    make_pairs(root / "ISBI2016_ISIC_Part1_Training_Data", root / "ISBI2016_ISIC_Part1_Training_GroundTruth", 10,
               mask_ext=".png", mask_name=lambda s: s + "_Segmentation", stem=lambda i: f"ISIC_{i:07d}")
    make_pairs(root / "ISBI2016_ISIC_Part1_Test_Data", root / "ISBI2016_ISIC_Part1_Test_GroundTruth", 3,
               mask_ext=".png", mask_name=lambda s: s + "_Segmentation", stem=lambda i: f"ISIC_{100 + i:07d}")
    summary, out, pj = run("isic", root, tmp_path)
    assert summary["images"] == {"train": 9, "val": 1, "test": 3}
    assert sorted(r["img_name"] for r in manifest(pj, "test")) == [f"ISIC_{100 + i:07d}.jpg" for i in range(3)]
    r = manifest(pj, "val")[0]
    assert r["mask_name"] == r["img_name"].replace(".jpg", "_Segmentation.png") and r["class_name"] == "skin melanoma"
    assert r["prompts"]["p1"] == "skin melanoma"


def test_dfu_images_masks_and_unlabelled_folder_reported(tmp_path):
    root = tmp_path / "DFUC2022"
    make_pairs(root / "DFUC2022_train_images", root / "DFUC2022_train_masks", 10, mask_ext=".png",
               stem=lambda i: f"{100 + i}")
    (root / "DFUC2022_val_images").mkdir()
    rgb_image(7).save(root / "DFUC2022_val_images" / "2001.jpg")
    summary, out, pj = run("dfu", root, tmp_path)
    assert summary["images"] == {"train": 8, "val": 1, "test": 1}
    assert any("DFUC2022_val_images" in n and "not used" in n for n in summary["notes"])
    assert all(r["class_name"] == "foot ulcer" for r in all_records(pj))


# ----------------------------------------------------------------------------------------------- BUSI
def test_busi_masks_merged_normal_empty(tmp_path):
    root = tmp_path / "Dataset_BUSI_with_GT"
    for cls in ("benign", "malignant", "normal"):
        (root / cls).mkdir(parents=True)
    for cls, k in [("benign", 1), ("benign", 2), ("malignant", 1), ("normal", 1)]:
        rgb_image(k).save(root / cls / f"{cls} ({k}).png")
    Image.fromarray(box_mask(2, 2, 10, 10)).save(root / "benign" / "benign (1)_mask.png")
    Image.fromarray(box_mask(20, 15, 30, 25)).save(root / "benign" / "benign (1)_mask_1.png")
    Image.fromarray(np.stack([box_mask(5, 5, 15, 12)] * 3, -1)).save(root / "benign" / "benign (2)_mask.png")
    Image.fromarray(box_mask(1, 1, 8, 8)).save(root / "malignant" / "malignant (1)_mask.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "normal" / "normal (1)_mask.png")
    summary, out, pj = run("busi", tmp_path, tmp_path)
    assert sum(summary["images"].values()) == 4 and summary["empty_masks"] == 1
    recs = {r["img_name"]: r for r in all_records(pj)}
    assert set(recs) == {"1_benign.png", "2_benign.png", "1_malignant.png", "1_normal.png"}  # the paper's names
    assert all(r["mask_name"] == r["img_name"] for r in recs.values())
    m = read_mask(out / "masks" / "1_benign.png")
    assert m.sum() == 9 * 9 + 11 * 11 and recs["1_benign.png"]["bbox"] == [2, 2, 30, 25]
    assert recs["1_benign.png"]["n_mask_files"] == 2
    assert recs["2_benign.png"]["bbox"] == [5, 5, 15, 12]
    assert recs["1_malignant.png"]["tumor_type"] == "malignant"
    assert recs["1_normal.png"]["tumor_type"] == "normal" and recs["1_normal.png"]["bbox"] is None
    assert read_mask(out / "masks" / "1_normal.png").sum() == 0
    assert recs["1_benign.png"]["source_name"] == "benign (1).png"
    assert all(r["class_name"] == "tumor" for r in recs.values())


# ---------------------------------------------------------------------------------------------- CAMUS
def write_camus_patient(folder, patient, ext, seed, quality="Good", sex="F", age=46):
    import SimpleITK as sitk
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for view in ("2CH", "4CH"):
        (folder / f"Info_{view}.cfg").write_text(f"ED: 1\nES: 12\nNbFrame: 13\nSex: {sex}\nAge: {age}\n"
                                                 f"ImageQuality: {quality}\nLVedv: 100.0\n")
        for cycle in ("ED", "ES"):
            img = rng.integers(0, 256, (H, W), dtype=np.uint8)
            gt = np.zeros((H, W), np.uint8)
            gt[5:20, 10:20] = 2
            gt[8:17, 13:17] = 1
            gt[20:27, 10:20] = 3
            stem = f"{patient}_{view}_{cycle}"
            sitk.WriteImage(sitk.GetImageFromArray(img), str(folder / f"{stem}{ext}"))
            sitk.WriteImage(sitk.GetImageFromArray(gt), str(folder / f"{stem}_gt{ext}"))


def test_camus_mhd_and_nifti_records_per_structure(tmp_path):
    root = tmp_path / "CAMUS"
    for i in range(10):
        ext = ".nii.gz" if i == 0 else ".mhd"
        write_camus_patient(root / "training" / f"patient{i + 1:04d}", f"patient{i + 1:04d}", ext, i,
                            quality=("Good", "Medium", "Poor")[i % 3], sex="FM"[i % 2], age=40 + i)
    summary, out, pj = run("camus", root, tmp_path)
    assert summary["images"] == {"train": 32, "val": 4, "test": 4}      # 8/1/1 patients x 4 images
    assert summary["records"] == {"train": 96, "val": 12, "test": 12}
    recs = all_records(pj)
    patients = {sp: {r["patient"] for r in manifest(pj, sp)} for sp in ("train", "val", "test")}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    # the paper's names: images/<train|test>/<stem>.png, masks/<train|test>/mask_<label>/<stem>_gt.png
    folder = {sp: ("test" if sp == "test" else "train") for sp in ("train", "val", "test")}
    for sp in ("train", "val", "test"):
        assert all(r["img_name"].startswith(folder[sp] + "/") and r["mask_name"].startswith(folder[sp] + "/mask_")
                   for r in manifest(pj, sp))
    by_mask = {r["mask_name"].split("/", 1)[1]: r for r in recs}
    r = by_mask["mask_2/patient0002_4CH_ES_gt.png"]
    assert r["img_name"].split("/", 1)[1] == "patient0002_4CH_ES.png" and r["class_name"] == "myocardium"
    assert r["segment_id"] == 1 and r["release_part"] == "training"
    assert (r["view"], r["cycle"], r["sex"], r["age"], r["image_quality"]) == (
        "four-chamber", "end of the systole", "male", 41, "medium")
    assert (r["view_code"], r["cycle_code"], r["label"]) == ("4CH", "ES", 2)
    p1 = by_mask["mask_1/patient0001_2CH_ED_gt.png"]
    part = p1["mask_name"].split("/", 1)[0]
    lv = read_mask(out / "masks" / p1["mask_name"])
    myo = read_mask(out / "masks" / part / "mask_2" / "patient0001_2CH_ED_gt.png")
    la = read_mask(out / "masks" / part / "mask_3" / "patient0001_2CH_ED_gt.png")
    assert (lv.sum(), myo.sum(), la.sum()) == (9 * 4, 15 * 10 - 9 * 4, 7 * 10)
    assert not (lv & myo).any() and by_mask["mask_3/patient0001_2CH_ED_gt.png"]["bbox"] == [10, 20, 19, 26]
    assert p1["class_name"] == "left ventricular cavity"
    p3 = by_mask["mask_1/patient0003_2CH_ED_gt.png"]
    img = np.asarray(Image.open(out / "images" / p3["img_name"]))
    assert img.dtype == np.uint8 and img.shape == (H, W)


def test_camus_official_split_lists(tmp_path):
    root = tmp_path / "CAMUS_public"
    for i in range(4):
        write_camus_patient(root / "database_nifti" / f"patient{i + 1:04d}", f"patient{i + 1:04d}", ".nii.gz", i)
    (root / "database_split").mkdir()
    (root / "database_split" / "subgroup_training.txt").write_text("patient0001\npatient0004\n")
    (root / "database_split" / "subgroup_validation.txt").write_text("patient0002\n")
    (root / "database_split" / "subgroup_testing.txt").write_text("patient0003\n")
    summary, out, pj = run("camus", root, tmp_path)
    assert summary["records"] == {"train": 24, "val": 12, "test": 12}
    assert {r["patient"] for r in manifest(pj, "test")} == {"patient0003"}


def test_camus_missing_gt_is_unpaired(tmp_path):
    root = tmp_path / "CAMUS"
    write_camus_patient(root / "patient0001", "patient0001", ".mhd", 0)
    os.remove(root / "patient0001" / "patient0001_4CH_ES_gt.mhd")
    with pytest.raises(PrepareError, match="image without mask: .*patient0001_4CH_ES.mhd"):
        run("camus", root, tmp_path)


# ---------------------------------------------------------------------------------------- CheXlocalize
def test_chexlocalize_rle_records_per_pathology(tmp_path):
    from pycocotools import mask as mask_utils

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        return {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}

    root = tmp_path / "CheXlocalize"
    data = {}
    for split, folder, n in (("val", "val", 6), ("test", "test", 2)):
        seg = {}
        for i in range(n):
            patient = f"patient{64000 + (100 if split == 'test' else 0) + i}"
            d = root / "CheXpert" / folder / patient / "study1"
            d.mkdir(parents=True)
            rgb_image(i).convert("L").save(d / "view1_frontal.jpg")
            img_id = f"{patient}_study1_view1_frontal"
            seg[img_id] = {"Cardiomegaly": rle(box_mask(10, 10, 30, 20) > 0),
                           "Edema": rle(box_mask(0, 0, 5, 5) > 0 if i % 2 else np.zeros((H, W), bool)),
                           "Pneumothorax": rle(np.zeros((H, W), bool))}
        data[split] = seg
        with open(root / f"gt_segmentations_{split}.json", "w") as f:
            json.dump(seg, f)
    summary, out, pj = run("chexlocalize", root, tmp_path)
    # the official val and test sets pooled and split by patient to the paper's record counts 1279/446/452:
    # 12 records -> 7/3/2, within one patient's records
    assert sum(summary["images"].values()) == 8
    assert all(abs(summary["records"][sp] - want) <= 2 for sp, want in zip(("train", "val", "test"), (7, 3, 2)))
    patients = {sp: {r["patient"] for r in manifest(pj, sp)} for sp in ("train", "val", "test")}
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])
    recs = all_records(pj)
    assert {r["official_split"] for r in recs} == {"val", "test"} and {r["pathology_source"] for r in recs} == {"masks"}
    assert len(recs) == 6 + 3 + 2 + 1       # Cardiomegaly everywhere, Edema on odd images, no empty ones
    assert not any(r["class_name"] == "Pneumothorax" for r in recs)
    r = [r for r in recs if r["mask_name"] == "patient64001_study1_view1_frontal_edema.png"][0]
    assert r["img_name"] == "patient64001_study1_view1_frontal.jpg" and r["view"] == "frontal"
    assert r["pathology"] == ["Cardiomegaly", "Edema"] and r["segment_id"] == 1 and r["bbox"] == [0, 0, 5, 5]
    assert r["prompts"]["p1"] == "Edema"
    m = read_mask(out / "masks" / "patient64001_study1_view1_frontal_cardiomegaly.png")
    assert m.sum() == 21 * 11 and m[10, 10] and not m[9, 10]
    assert any("empty (image, pathology)" in n for n in summary["notes"])


# --------------------------------------------------------------------------------------- real datasets
@pytest.mark.parametrize("name,folder,counts", [("kvasir", "kvasir_seg", (800, 100, 100)),
                                                ("clinicdb", "cvc_clinicdb", (490, 61, 61))])
def test_real_data_when_present(name, folder, counts, tmp_path):
    src = os.path.join(SHARED, folder)
    if not os.path.isdir(os.path.join(src, "images")):
        pytest.skip(f"{src} not present")
    summary, out, pj = run(name, src, tmp_path)
    assert tuple(summary["images"][s] for s in ("train", "val", "test")) == counts
    read_mask = (lambda p: load_mask(str(p))) if name == "kvasir" else globals()["read_mask"]  # JPEG masks copied
    assert summary["empty_masks"] == 0
    recs = all_records(pj)
    assert len({r["img_name"] for r in recs}) == sum(counts)
    for r in recs[::25]:   # a sample of masks: binary, same size as the image, bbox matches
        m = read_mask(out / "masks" / r["mask_name"])
        with Image.open(out / "images" / r["img_name"]) as img:
            assert m.shape == (img.height, img.width)
        ys, xs = np.nonzero(m)
        assert r["bbox"] == [xs.min(), ys.min(), xs.max(), ys.max()]
