"""The paper's released manifests: imported as they are, and trained and evaluated on.

The real tests read the released Kvasir-SEG and CVC-ClinicDB manifests from ``SHARED_ROOT/reference/
medvlsm_anns`` and the images from ``SHARED_DATA`` (skipped when absent; never copied into the repository).
The replica tests write small manifests in the paper's format (its record keys and file-name patterns) and tiny
releases of every dataset into ``tmp_path``: duplicates, empty val files, missing images, other formats, and the
name mapping of every converter (``datasets.prepare`` writes the names the paper's manifests use).
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
from conftest import SHARED_DATA, SHARED_ROOT
from PIL import Image

from datasets.import_manifests import ImportError_, get_args_parser, import_manifests, main
from datasets.manifest import ManifestError, ManifestWarning, load_manifest
from util.errors import run_cli

ANNS = os.path.join(SHARED_ROOT, "reference", "medvlsm_anns")
W, H = 40, 30


def paper_record(img, mask, i=0, **prompts):
    """A record with every key of the released manifests (list-valued p7)."""
    return {"bbox": [1, 2, 20, 25], "cat": 0, "segment_id": os.path.splitext(img)[0], "img_name": img,
            "mask_name": mask, "sentences": [{"idx": 0, "sent_id": i, "sent": ""}], "sentences_num": 1,
            "prompts": {"p0": "", "p1": "polyp", "p7": ["polyp which is a growth", "polyp which is a lump"],
                        **prompts}}


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def pair(root, img, mask=None):
    for sub, name in (("images", img), ("masks", mask or img)):
        path = os.path.join(root, sub, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if sub == "images":
            Image.fromarray(np.random.default_rng(len(name)).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)
        else:
            m = np.zeros((H, W), np.uint8)
            m[5:20, 8:30] = 255
            Image.fromarray(m).save(path)


def quiet(*_):
    pass


# ------------------------------------------------------------------------------------ the real manifests
@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The released Kvasir-SEG and ClinicDB manifests imported onto the shared image folders."""
    if not (os.path.isdir(os.path.join(ANNS, "kvasir_polyp"))
            and os.path.isdir(os.path.join(SHARED_DATA, "kvasir_seg"))):
        pytest.skip("the paper's manifests or the shared Kvasir-SEG / CVC-ClinicDB are not available")
    root = tmp_path_factory.mktemp("paper_split")
    data, pj = str(root / "data"), str(root / "prompts_json")
    reports = import_manifests(ANNS, ["kvasir", "clinicdb"], data, pj,
                               [f"kvasir={SHARED_DATA}/kvasir_seg", f"clinicdb={SHARED_DATA}/cvc_clinicdb"], log=quiet)
    return reports, data, pj, root


def test_paper_manifests_import_with_provenance(imported):
    reports, data, pj, _ = imported
    for name, counts in (("kvasir", (800, 100, 100)), ("clinicdb", (490, 61, 61))):
        prov = json.load(open(os.path.join(pj, name, "provenance.json")))
        assert tuple(prov["written"][s]["records"] for s in ("train", "val", "test")) == counts
        assert all(len(f["sha256"]) == 64 and f["path"].startswith(ANNS) for f in prov["files"].values())
        assert prov["name_mapping"] == "identity" and os.path.islink(os.path.join(data, name, "images"))
        # written as released: every key kept, list-valued p7..p9
        r = load_manifest(os.path.join(pj, name, "train.json"))[0]
        assert {"bbox", "cat", "segment_id", "sentences", "sentences_num"} <= set(r)
        assert all(isinstance(r["prompts"][k], list) for k in ("p7", "p8", "p9"))
    # the split is the paper's: no image in two splits
    names = {s: {r["img_name"] for r in load_manifest(os.path.join(pj, "kvasir", f"{s}.json"))} for s in
             ("train", "val", "test")}
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])


def test_train_and_evaluate_on_the_paper_split_with_a_list_prompt(imported):
    from vlsm.training import default_args, run_training
    _, data, pj, root = imported
    res = run_training(default_args(data="kvasir", size="tiny", weights="none", prompt="p7", epochs=1,
                                    max_steps_per_epoch=2, batch_size=4, input_size=64, workers=0, data_root=data,
                                    prompts_root=pj, output_dir=str(root / "runs"), no_cache=True))
    test = res["test"]
    assert test["n"] == 100 and test["prompt"] == "p7" and test["manifest"] == os.path.abspath(
        os.path.join(pj, "kvasir", "test.json"))
    rows = open(os.path.join(test["results_dir"], "per_image.csv")).read().splitlines()
    assert len(rows) == 101
    texts = json.load(open(os.path.join(pj, "kvasir", "test.json")))[0]["prompts"]["p7"]
    assert texts[0] in "\n".join(rows)          # evaluation uses the list's first text


def test_import_onto_our_prepared_kvasir(imported, tmp_path):
    """``python -m datasets.prepare kvasir`` writes the names the paper's manifests use."""
    from datasets.prepare import prepare
    data, pj = str(tmp_path / "data"), str(tmp_path / "pj")
    prepare("kvasir", os.path.join(SHARED_DATA, "kvasir_seg"), data, pj, log=quiet)
    with pytest.raises(ImportError_, match="--overwrite"):       # our seeded split is not the paper's
        import_manifests(ANNS, ["kvasir"], data, pj, log=quiet)
    rep = import_manifests(ANNS, ["kvasir"], data, pj, overwrite=True, log=quiet)
    assert rep["kvasir"]["written"]["test"]["records"] == 100 and not rep["kvasir"]["links"]


# ---------------------------------------------------------------------------------------------- replicas
def test_duplicates_warned_with_both_indices_kept_or_dropped(tmp_path):
    recs = [paper_record("a.jpeg", "a.jpeg", 1), paper_record("b.jpeg", "b.jpeg", 2),
            paper_record("a.jpeg", "a.jpeg", 689)]          # BKAI's: the same image again, another sent_id
    write(str(tmp_path / "m.json"), recs)
    with pytest.warns(ManifestWarning, match=r"record 2 repeats record 0 \(a.jpeg, a.jpeg\).*--drop-duplicates"):
        assert len(load_manifest(str(tmp_path / "m.json"))) == 3
    with pytest.warns(ManifestWarning, match="dropped"):
        kept = load_manifest(str(tmp_path / "m.json"), drop_duplicates=True)
    assert [r["img_name"] for r in kept] == ["a.jpeg", "b.jpeg"]


def test_drop_duplicates_is_a_train_and_evaluate_option():
    import evaluate
    import train
    assert train.get_args_parser().parse_args(["--drop-duplicates"]).drop_duplicates
    assert evaluate.get_args_parser().parse_args(["--checkpoint", "x", "--drop-duplicates"]).drop_duplicates


def test_empty_val_of_a_test_only_set_and_pooled_test(tmp_path):
    src = tmp_path / "medvlsm" / "data" / "etis_polyp" / "anns"
    write(str(src / "train.json"), [paper_record("1.png", "1.png"), paper_record("2.png", "2.png")])
    write(str(src / "val.json"), [])
    write(str(src / "test.json"), [paper_record("3.png", "3.png")])
    write(str(src / "testB.json"), [paper_record("3.png", "3.png")])
    assert load_manifest(str(src / "val.json"), allow_empty=True) == []
    with pytest.raises(ManifestError, match="empty.*cannot be used for training"):
        load_manifest(str(src / "val.json"))
    for i in (1, 2, 3):
        pair(str(tmp_path / "data" / "etis"), f"{i}.png")
    rep = import_manifests(str(tmp_path / "medvlsm"), ["etis_polyp"], str(tmp_path / "data"), str(tmp_path / "pj"),
                           log=quiet)["etis"]
    assert list(rep["written"]) == ["test"] and rep["written"]["test"]["records"] == 3   # train + test
    assert any("testB.json" in n for n in rep["notes"]) and not (tmp_path / "pj" / "etis" / "val.json").exists()


def test_missing_images_are_all_listed_and_nothing_is_written(tmp_path, capsys):
    src = tmp_path / "anns" / "kvasir_polyp"
    write(str(src / "train.json"), [paper_record(f"{i}.jpg", f"{i}.jpg") for i in range(4)])
    write(str(src / "val.json"), [paper_record("v.jpg", "v.jpg")])
    write(str(src / "test.json"), [paper_record("t.jpg", "t.jpg")])
    pair(str(tmp_path / "data" / "kvasir"), "0.jpg")
    pair(str(tmp_path / "data" / "kvasir"), "v.jpg")
    with pytest.raises(SystemExit) as e:
        run_cli(main, get_args_parser(), ["--from", str(tmp_path / "anns"), "--data-root", str(tmp_path / "data"),
                                          "--prompts-root", str(tmp_path / "pj")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "nothing written" in err
    for name in ("1.jpg", "2.jpg", "3.jpg", "t.jpg"):      # every missing image and mask, not only the first
        assert f"image missing: {tmp_path}/data/kvasir/images/{name}" in err
        assert f"mask missing: {tmp_path}/data/kvasir/masks/{name}" in err
    assert "0.jpg" not in err and not (tmp_path / "pj").exists()


@pytest.mark.parametrize("content, match", [
    ({"images": [], "annotations": []}, "COCO annotation file, not a list of records; expected a JSON list"),
    ({"kvasir": []}, "JSON object with keys kvasir, not a list"),
    (b"\x00\x01LMDB\xff\xfe", "not a UTF-8 text file"),
    ("lmdb-folder", "is a folder"),
])
def test_other_formats_name_the_expected_shape(tmp_path, content, match):
    path = tmp_path / "anns" / "kvasir_polyp" / "train.json"
    path.parent.mkdir(parents=True)
    if content == "lmdb-folder":
        path.mkdir()
        (path / "data.mdb").write_bytes(b"\x00")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps(content))
    with pytest.raises((ImportError_, ManifestError), match=match):
        import_manifests(str(tmp_path / "anns"), ["kvasir"], str(tmp_path / "data"), str(tmp_path / "pj"), log=quiet)


def test_cvc300_copy_of_colondb_is_refused(tmp_path):
    recs = [paper_record("209.png", "209.png")]
    for name in ("cvc300_polyp", "colondb_polyp"):
        write(str(tmp_path / "anns" / name / "test.json"), recs)
    pair(str(tmp_path / "data" / "cvc300"), "209.png")
    with pytest.raises(ImportError_, match="byte-identical to colondb_polyp"):
        import_manifests(str(tmp_path / "anns"), ["cvc300"], str(tmp_path / "data"), str(tmp_path / "pj"), log=quiet)


# ------------------------------------------------- every converter writes the paper's names (replica releases)
def _release(name, root):
    """A tiny release of ``name`` in its own layout, and paper-style manifests naming its files:
    (src folder, {split: records})."""
    src = root / "src"
    img = lambda p: pair_image(src / p)      # noqa: E731
    msk = lambda p, **kw: pair_mask(src / p, **kw)  # noqa: E731
    ids = {"train": ["a", "b", "c", "d", "e", "f", "g", "h"], "val": ["i"], "test": ["j"]}
    man = {}
    if name in ("kvasir", "colondb", "etis", "clinicdb", "bkai", "dfu", "isic", "busi"):
        for sp, stems in ids.items():
            recs = []
            for k, s in enumerate(stems):
                n = str(100 + k + 10 * "train val test".split().index(sp))
                if name == "kvasir":
                    img(f"Kvasir-SEG/images/cju{s}0qkwl35.jpg"), msk(f"Kvasir-SEG/masks/cju{s}0qkwl35.jpg")
                    recs.append(paper_record(f"cju{s}0qkwl35.jpg", f"cju{s}0qkwl35.jpg"))
                elif name == "clinicdb":
                    img(f"CVC-ClinicDB/Original/{n}.tif"), msk(f"CVC-ClinicDB/Ground Truth/{n}.tif")
                    recs.append(paper_record(f"{n}.png", f"{n}.png"))
                elif name == "colondb":
                    img(f"CVC-ColonDB/images/{n}.png"), msk(f"CVC-ColonDB/masks/{n}.png")
                    recs.append(paper_record(f"{n}.png", f"{n}.png"))
                elif name == "etis":
                    img(f"ETIS/ETIS-LaribPolypDB/{n}.tif"), msk(f"ETIS/GroundTruth/p{n}.tif")
                    recs.append(paper_record(f"{n}.png", f"{n}.png"))
                elif name == "bkai":
                    img(f"bkai/train/train/{s}7c9b3e.jpeg"), msk(f"bkai/train_gt/train_gt/{s}7c9b3e.jpeg", rgb=True)
                    recs.append(paper_record(f"{s}7c9b3e.jpeg", f"{s}7c9b3e.jpeg"))
                elif name == "dfu":
                    img(f"DFUC2022/DFUC2022_train_images/{n}.jpg"), msk(f"DFUC2022/DFUC2022_train_masks/{n}.png")
                    recs.append(paper_record(f"{n}.jpg", f"{n}.png"))
                elif name == "isic":
                    part = "Test" if sp == "test" else "Training"
                    img(f"ISIC/ISBI2016_ISIC_Part1_{part}_Data/ISIC_000{n}.jpg")
                    msk(f"ISIC/ISBI2016_ISIC_Part1_{part}_GroundTruth/ISIC_000{n}_Segmentation.png")
                    recs.append(paper_record(f"ISIC_000{n}.jpg", f"ISIC_000{n}_Segmentation.png"))
                elif name == "busi":
                    cls = ("benign", "malignant", "normal")[k % 3]
                    img(f"Dataset_BUSI_with_GT/{cls}/{cls} ({n}).png")
                    msk(f"Dataset_BUSI_with_GT/{cls}/{cls} ({n})_mask.png")
                    recs.append(paper_record(f"{n}_{cls}.png", f"{n}_{cls}.png"))
            man[sp] = recs
        if name in ("colondb", "etis"):
            man = {"train": man["train"], "val": [], "test": man["val"] + man["test"]}
    elif name == "camus":
        import SimpleITK as sitk
        for part, patients in (("training", ["patient0001", "patient0002"]), ("testing", ["patient0001"])):
            for patient in patients:
                d = src / "CAMUS" / part / patient
                d.mkdir(parents=True)
                for view in ("2CH", "4CH"):
                    (d / f"Info_{view}.cfg").write_text("Sex: M\nAge: 50\nImageQuality: Good\n")
                    for cyc in ("ED", "ES"):
                        g = np.zeros((H, W), np.uint8)
                        g[5:20, 10:20], g[8:17, 13:17], g[20:27, 10:20] = 2, 1, 3
                        sitk.WriteImage(sitk.GetImageFromArray(np.full((H, W), 90, np.uint8)),
                                        str(d / f"{patient}_{view}_{cyc}.mhd"))
                        sitk.WriteImage(sitk.GetImageFromArray(g), str(d / f"{patient}_{view}_{cyc}_gt.mhd"))
        # the paper's CAMUS names: relative to images/train (train, val) and images/test (test)
        man = {sp: [{"img_name": f"{p}_2CH_ED.png", "mask_name": f"mask_{k}/{p}_2CH_ED_gt.png",
                     "prompts": {"p0": "", "p1": ["Myocardium of the heart."]}} for k in (1, 2, 3)]
               for sp, p in (("train", "patient0002"), ("val", "patient0001"), ("test", "patient0001"))}
    elif name == "chexlocalize":
        from pycocotools import mask as mask_utils
        seg, man = {"val": {}, "test": {}}, {"train": [], "val": [], "test": []}
        for sp, num, part in (("train", 64541, "val"), ("val", 64600, "val"), ("test", 64800, "test")):
            img_id = f"patient{num}_study1_view1_frontal"
            img(f"CheXlocalize/CheXpert/{part}/patient{num}/study1/view1_frontal.jpg")
            m = np.zeros((H, W), np.uint8)
            m[3:10, 3:10] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            for path in ("Airspace Opacity", "Enlarged Cardiomediastinum"):
                seg[part].setdefault(img_id, {})[path] = {"size": [H, W], "counts": rle["counts"].decode()}
                slug = path.lower().replace(" ", "_")
                man[sp].append(paper_record(f"{img_id}.jpg", f"{img_id}_{slug}.png"))
        for part, s in seg.items():
            write(str(src / "CheXlocalize" / f"gt_segmentations_{part}.json"), s)
    return src, man


def pair_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def pair_mask(path, rgb=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((H, W), np.uint8)
    m[5:20, 8:30] = 255
    Image.fromarray(np.stack([m, 0 * m, 0 * m], -1) if rgb else m).save(path)


@pytest.mark.parametrize("name", ["kvasir", "clinicdb", "bkai", "etis", "colondb", "isic", "dfu", "camus", "busi",
                                  "chexlocalize"])
def test_every_converter_writes_the_names_of_the_paper_manifests(name, tmp_path):
    from datasets.import_manifests import PAPER_FOLDERS
    from datasets.prepare import prepare
    src, man = _release(name, tmp_path)
    data, pj = str(tmp_path / "data"), str(tmp_path / "pj")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(name, str(src), data, pj, log=quiet)
    for sp, recs in man.items():
        write(str(tmp_path / "medvlsm" / "data" / PAPER_FOLDERS[name] / "anns" / f"{sp}.json"), recs)
    rep = import_manifests(str(tmp_path / "medvlsm"), [name], data, str(tmp_path / "imported"), log=quiet)[name]
    if name == "camus":   # mapped into the paper's split folders, which prepare writes too
        assert load_manifest(rep["written"]["test"]["path"])[0]["img_name"] == "test/patient0001_2CH_ED.png"
        assert rep["written"]["val"]["records"] == 3
