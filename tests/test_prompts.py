"""Tests for prompt attributes, templates, make_prompts.py, perturb_prompts.py and the perturbation report."""
from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from skimage import draw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from conftest import SHARED_DATA  # noqa: E402

import make_prompts  # noqa: E402
import perturb_prompts  # noqa: E402
from datasets import attributes as A  # noqa: E402
from datasets import prompt_templates as T  # noqa: E402

KVASIR = os.path.join(SHARED_DATA, "kvasir_seg")


def disc(shape, center, radius):
    m = np.zeros(shape, dtype=bool)
    rr, cc = draw.disk(center, radius, shape=shape)
    m[rr, cc] = True
    return m


def ellipse(shape, center, r_row, r_col):
    m = np.zeros(shape, dtype=bool)
    rr, cc = draw.ellipse(center[0], center[1], r_row, r_col, shape=shape)
    m[rr, cc] = True
    return m


# ----------------------------------------------------------------------------- attributes
def test_two_discs_are_two_targets_and_specks_are_ignored():
    m = disc((200, 200), (50, 50), 20) | disc((200, 200), (150, 150), 15)
    m[5, 190] = m[6, 190] = True  # a 2-pixel speck
    a = A.mask_attributes(m)
    assert a["count"] == 2 and a["number"] == "two"
    assert a["location"] == ["top left", "bottom right"]  # largest first
    assert a["area_fraction"][0] == pytest.approx(np.pi * 20 ** 2 / 200 ** 2, rel=0.05)
    assert a["bbox"] == [31, 5, 190, 164]  # skimage disks exclude the radius; specks count for the box


def test_small_component_relative_to_largest_is_a_speck():
    big = disc((300, 300), (150, 150), 100)  # ~31400 px
    small = disc((300, 300), (10, 10), 5)  # ~80 px < 5 % of the largest
    assert A.mask_attributes(big | small)["count"] == 1


def test_number_words():
    assert [A.number_word(i) for i in range(7)] == ["no", "one", "two", "three", "four", "five", "many"]
    m = np.zeros((100, 400), bool)
    for k in range(7):
        m[40:60, 10 + 55 * k: 40 + 55 * k] = True
    assert A.mask_attributes(m)["number"] == "many"


def test_location_grid_names():
    shape = (90, 90)
    expected = {(15, 15): "top left", (15, 45): "top", (15, 75): "top right", (45, 15): "left",
                (45, 45): "center", (45, 75): "right", (75, 15): "bottom left", (75, 45): "bottom",
                (75, 75): "bottom right"}
    for center, name in expected.items():
        assert A.mask_attributes(disc(shape, center, 8))["location"] == [name]


def test_size_thresholds_by_area_share():
    h = w = 100
    for side, name in [(20, "small"), (22, "small"), (23, "medium"), (44, "medium"), (45, "large"), (90, "large")]:
        m = np.zeros((h, w), bool)
        m[:side, :side] = True  # share = side^2 / 10000
        assert A.mask_attributes(m)["size"] == [name], side
    assert A.size_word(0.0499) == "small" and A.size_word(0.05) == "medium"
    assert A.size_word(0.1999) == "medium" and A.size_word(0.2) == "large"


def test_shapes():
    assert A.shape_word(disc((200, 200), (100, 100), 60)) == "round"
    assert A.shape_word(ellipse((200, 300), (100, 150), 40, 100)) == "oval"
    sq = np.zeros((100, 100), bool)
    sq[20:70, 30:60] = True
    assert A.shape_word(sq) == "rectangular"
    # a crescent: concave -> irregular
    crescent = disc((200, 200), (100, 100), 70) & ~disc((200, 200), (100, 140), 60)
    assert A.shape_word(crescent) == "irregular"
    # a star (ragged/concave outline) -> irregular
    t = np.linspace(0, 2 * np.pi, 11)[:-1]
    r = np.where(np.arange(10) % 2 == 0, 90, 40)
    star = np.zeros((200, 200), bool)
    rr, cc = draw.polygon(100 + r * np.sin(t), 100 + r * np.cos(t), star.shape)
    star[rr, cc] = True
    assert A.shape_word(star) == "irregular"
    m = A.shape_measures(disc((300, 300), (150, 150), 100))
    assert m["circularity"] > 0.95 and m["axis_ratio"] > 0.98


def test_colour_names():
    m = disc((64, 64), (32, 32), 15)
    for rgb, name in [((255, 0, 0), "red"), ((240, 160, 170), "pink"), ((250, 250, 250), "white"),
                      ((10, 10, 10), "black"), ((30, 60, 220), "blue"), ((120, 75, 35), "brown"),
                      ((128, 128, 128), "grey"), ((40, 180, 50), "green"), ((230, 210, 50), "yellow")]:
        img = np.zeros((64, 64, 3), np.uint8)
        img[m] = rgb
        img[~m] = (0, 255, 0)  # the background must not matter
        assert A.colour_word(img, m) == name, rgb
    hue, sat, val = A.mean_hsv(np.full((4, 4, 3), (255, 0, 0), np.uint8), np.ones((4, 4)))
    assert hue == pytest.approx(0, abs=1e-6) and sat == pytest.approx(1) and val == pytest.approx(1)


def test_empty_mask_handling():
    a = A.mask_attributes(np.zeros((50, 50)), np.zeros((50, 50, 3), np.uint8))
    assert a == {"count": 0, "number": "no", "size": None, "location": None, "area_fraction": None,
                 "shape": None, "colour": None, "bbox": None}


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="2-D"):
        A.mask_attributes(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="differ in size"):
        A.colour_word(np.zeros((5, 5, 3), np.uint8), np.ones((4, 4)))


# ----------------------------------------------------------------------------- templates
POLYP = {"count": 1, "number": "one", "size": ["medium"], "colour": "pink", "shape": "round",
         "location": ["top left"], "class_name": "polyp"}


def test_non_radiology_templates_match_paper_examples():
    p = T.build_prompts("kvasir", POLYP)
    assert p["p0"] == "" and p["p1"] == "polyp" and p["p2"] == "round polyp"
    assert p["p3"] == "pink round polyp" and p["p4"] == "medium pink round polyp"
    assert p["p5"] == "one medium pink round polyp"
    assert p["p6"] == "one medium pink round polyp, located in the top left of the image"
    assert len(p["p7"]) == len(p["p8"]) == len(p["p9"]) == 5
    assert "polyp, which is a small lump in the lining of colon" in p["p7"]
    assert ("one medium pink round polyp, which is a small lump in the lining of colon "
            "located in the top left of the image") in p["p9"]
    assert set(p) == {f"p{i}" for i in range(10)}


def test_isic_dfu_class_names_and_multi_target():
    attrs = dict(POLYP, class_name=None, count=2, number="two", size=["medium", "small"],
                 location=["center", "left"])
    isic = T.build_prompts("isic", attrs)
    assert isic["p1"] == "skin melanoma"
    assert isic["p6"] == "two medium and small pink round skin melanomas, located in the center, left of the image"
    assert "skin melanoma, which is a rough wound on skin" in isic["p7"]
    dfu = T.build_prompts("dfu", dict(POLYP, class_name=None))
    assert dfu["p1"] == "foot ulcer" and "foot ulcer, which is a sore in foot and toes" in dfu["p7"]
    with pytest.raises(ValueError, match="unknown dataset"):
        T.build_prompts("nope", POLYP)


def test_busi_templates():
    attrs = {"count": 2, "number": "two", "size": ["medium", "medium"], "location": ["center", "left"],
             "shape": "oval", "tumor_type": "benign", "class_name": "tumor"}
    p = T.build_prompts("busi", attrs)
    tail = " in the breast ultrasound image."
    assert p["p1"] == "Tumor" + tail
    assert p["p2"] == ["Benign tumor" + tail, "Regular-shaped tumor" + tail]
    assert p["p3"] == ["Two benign tumors" + tail, "Two regular-shaped tumors" + tail]
    assert p["p4"][0] == "Two medium benign tumors" + tail
    assert p["p5"][0] == "Two medium benign tumors at the center, left" + tail
    assert p["p6"] == ["Two medium oval-shaped benign tumors at the center, left" + tail,
                       "Two medium oval-shaped regular tumors at the center, left" + tail]
    mal = T.build_prompts("busi", dict(attrs, tumor_type="malignant", count=1, number="one"))
    assert mal["p3"][1] == "One irregular-shaped tumor" + tail
    normal = T.build_prompts("busi", {"count": 0, "number": "no", "tumor_type": "normal"})
    assert all(normal[f"p{i}"] == "No tumor" + tail for i in range(1, 7)) and normal["p0"] == ""


def test_camus_templates():
    attrs = {"class_name": "left ventricular cavity", "view": "two-chamber", "cycle": "end of the diastole",
             "sex": "female", "age": 46, "image_quality": "poor", "shape": "oval"}
    p = T.build_prompts("camus", attrs)
    assert p["p1"] == ["Left ventricular cavity of the heart.", "Left ventricular cavity in the cardiac ultrasound."]
    assert p["p2"][0] == "Left ventricular cavity in two-chamber view of the heart."
    assert p["p3"][1] == ("Left ventricular cavity in two-chamber view in the cardiac ultrasound "
                          "at the end of the diastole cycle.")
    assert p["p4"][0].endswith("diastole cycle of a female.")
    assert p["p5"][0].endswith("of a forty-six-year-old female.")
    assert p["p6"][0].endswith("forty-six-year-old female with poor image quality.")
    assert p["p7"][1] == ("Left ventricular cavity of oval shape in two-chamber view in the cardiac ultrasound "
                          "at the end of the diastole cycle of a forty-six-year-old female with poor image quality.")
    assert [T.number_to_words(n) for n in (7, 40, 46, 99)] == ["seven", "forty", "forty-six", "ninety-nine"]


def test_chexlocalize_templates():
    attrs = {"class_name": "Airspace Opacity", "view": "frontal", "shape": "rectangular",
             "location": ["right"], "pathology": ["Airspace Opacity", "Cardiomegaly", "Pleural Effusion"]}
    p = T.build_prompts("chexlocalize", attrs)
    assert p["p1"] == "Airspace Opacity in a chest Xray."
    assert p["p2"] == "Airspace Opacity in the frontal view of a Chest Xray."
    assert p["p3"] == "Airspace Opacity of shape rectangular in the frontal view of a Chest Xray."
    assert p["p4"] == "Airspace Opacity of shape rectangular, and located in right of the frontal view of a Chest Xray."
    assert p["p5"] == p["p4"] + " Cardiomegaly, Pleural Effusion are present."
    assert p["p6"] == "Airspace Opacity in a Chest Xray. Cardiomegaly, Pleural Effusion are present."


# ----------------------------------------------------------------------------- make_prompts end to end
def _write_pair(root, name, stem, mask, rgb=(230, 150, 160), ext=".png"):
    img = np.full(mask.shape + (3,), 60, np.uint8)
    img[mask] = rgb
    os.makedirs(os.path.join(root, name, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, name, "masks"), exist_ok=True)
    Image.fromarray(img).save(os.path.join(root, name, "images", stem + ext))
    Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(root, name, "masks", stem + ".png"))


def _manifest(prompts_root, name, split, records):
    os.makedirs(os.path.join(prompts_root, name), exist_ok=True)
    path = os.path.join(prompts_root, name, f"{split}.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def _args(**kw):
    base = dict(data="kvasir", data_root="data", prompts_root="prompts_json", splits="train,val,test",
                seed=0, stats=False, dry_run=False, vqa=None)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture
def tiny_kvasir(tmp_path):
    data, prompts = str(tmp_path / "data"), str(tmp_path / "prompts")
    shape = (90, 120)
    _write_pair(data, "kvasir", "a", disc(shape, (15, 20), 10), rgb=(220, 20, 20))
    _write_pair(data, "kvasir", "b", disc(shape, (45, 60), 25) | disc(shape, (75, 105), 8))
    _write_pair(data, "kvasir", "c", np.zeros(shape, bool))
    recs = [{"img_name": f"{s}.png", "mask_name": f"{s}.png", "prompts": {"p0": "", "p1": "polyp"},
             "cat": 1, "segment_id": 0, "sentences": [], "extra": s} for s in "abc"]
    _manifest(prompts, "kvasir", "train", recs[:2])
    _manifest(prompts, "kvasir", "test", recs[2:])
    return data, prompts


def test_make_prompts_end_to_end(tiny_kvasir, capsys):
    data, prompts = tiny_kvasir
    out = make_prompts.main(_args(data_root=data, prompts_root=prompts, stats=True))
    assert set(out) == {"train", "test"}  # val missing: skipped with a note
    text = capsys.readouterr().out
    assert "split 'val' skipped" in text
    train = json.load(open(os.path.join(prompts, "kvasir", "train.json")))
    a, b = train
    assert a["extra"] == "a" and a["sentences"] == []  # other fields kept
    assert a["attributes"]["number"] == "one" and a["attributes"]["location"] == ["top left"]
    assert a["attributes"]["colour"] == "red" and a["attributes"]["size"] == ["small"]
    assert a["prompts"]["p6"] == "one small red round polyp, located in the top left of the image"
    assert a["bbox"] == [11, 6, 29, 24]  # inclusive; skimage disks exclude the radius
    assert b["attributes"]["number"] == "two" and b["attributes"]["size"] == ["medium", "small"]
    assert b["attributes"]["colour"] == "pink"
    assert b["prompts"]["p5"] == "two medium and small pink round polyps"
    c = json.load(open(os.path.join(prompts, "kvasir", "test.json")))[0]
    assert c["attributes"]["number"] == "no" and c["prompts"]["p5"] == "no polyp"
    assert not [f for f in os.listdir(os.path.join(prompts, "kvasir")) if f.startswith(".tmp")]
    # --stats: one line per value; size counts each target (3 targets over 3 records)
    assert "kvasir (train, test): 3 records" in text
    lines = {tuple(line.split()[:2]): line.split()[2] for line in text.splitlines()
             if line.startswith(("number", "size", "colour"))}
    assert lines[("number", "one")] == "1" and lines[("number", "two")] == "1" and lines[("number", "no")] == "1"
    assert lines[("size", "small")] == "2" and lines[("size", "medium")] == "1"
    assert lines[("colour", "red")] == "1" and lines[("colour", "(none)")] == "1"


def test_make_prompts_dry_run_writes_nothing_and_is_deterministic(tiny_kvasir, capsys):
    data, prompts = tiny_kvasir
    path = os.path.join(prompts, "kvasir", "train.json")
    before = open(path).read()
    r1 = make_prompts.main(_args(data_root=data, prompts_root=prompts, stats=True, dry_run=True))
    assert open(path).read() == before
    r2 = make_prompts.main(_args(data_root=data, prompts_root=prompts, dry_run=True, seed=5))
    assert r1 == r2
    assert "number" in capsys.readouterr().out


def test_make_prompts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest found"):
        make_prompts.main(_args(data_root=str(tmp_path), prompts_root=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown dataset"):
        make_prompts.main(_args(data="nope"))
    _manifest(str(tmp_path), "kvasir", "test", [{"img_name": "x.png", "mask_name": "x.png"}])
    with pytest.raises(ValueError, match="not found"):
        make_prompts.main(_args(data_root=str(tmp_path), prompts_root=str(tmp_path), splits="test"))


def test_make_prompts_busi_camus_chexlocalize(tmp_path):
    data, prompts = str(tmp_path / "data"), str(tmp_path / "prompts")
    shape = (90, 90)
    _write_pair(data, "busi", "benign_1", disc(shape, (45, 50), 20) | disc(shape, (45, 12), 12))
    _write_pair(data, "busi", "normal_1", np.zeros(shape, bool))
    _manifest(prompts, "busi", "test", [
        {"img_name": "benign_1.png", "mask_name": "benign_1.png", "prompts": {}, "tumor_type": "benign"},
        {"img_name": "normal_1.png", "mask_name": "normal_1.png", "prompts": {}}])  # type from the name
    busi = make_prompts.main(_args(data="busi", data_root=data, prompts_root=prompts, splits="test"))["test"]
    assert busi[0]["prompts"]["p5"][0] == ("Two medium benign tumors at the center, left "
                                           "in the breast ultrasound image.")
    assert busi[1]["attributes"]["tumor_type"] == "normal"
    assert busi[1]["prompts"]["p6"] == "No tumor in the breast ultrasound image."

    _write_pair(data, "camus", "p1_2CH_ED", ellipse(shape, (45, 45), 35, 15))
    _manifest(prompts, "camus", "test", [
        {"img_name": "p1_2CH_ED.png", "mask_name": "p1_2CH_ED.png", "prompts": {}, "class_name": "Myocardium",
         "view": "2CH", "cycle": "ED", "sex": "F", "age": "40", "image_quality": "Poor"}])
    camus = make_prompts.main(_args(data="camus", data_root=data, prompts_root=prompts, splits="test"))["test"]
    assert camus[0]["attributes"]["colour"] is None  # no colour for radiology
    assert camus[0]["prompts"]["p7"][0] == ("Myocardium of oval shape in two-chamber view of the heart at the end "
                                            "of the diastole cycle of a forty-year-old female with poor image quality.")

    _write_pair(data, "chexlocalize", "x1", disc(shape, (45, 75), 10))
    _manifest(prompts, "chexlocalize", "test", [
        {"img_name": "x1.png", "mask_name": "x1.png", "prompts": {}, "class_name": "lung_opacity",
         "view": "Frontal", "pathologies": ["Lung Opacity", "edema"]}])
    chex = make_prompts.main(_args(data="chexlocalize", data_root=data, prompts_root=prompts, splits="test"))["test"]
    assert chex[0]["prompts"]["p5"] == ("Lung Opacity of shape round, and located in right of the frontal view "
                                        "of a Chest Xray. Edema are present.")
    _manifest(prompts, "camus", "val", [{"img_name": "p1_2CH_ED.png", "mask_name": "p1_2CH_ED.png",
                                         "class_name": "myocardium", "view": "3CH"}])
    with pytest.raises(ValueError, match="unknown view '3CH'"):
        make_prompts.main(_args(data="camus", data_root=data, prompts_root=prompts, splits="val"))


def test_vqa_path_with_fake_pipeline(tiny_kvasir, monkeypatch):
    data, prompts = tiny_kvasir
    asked = []

    def fake_vqa(image, question, top_k=1):
        asked.append(question)
        return [{"answer": "Triangular" if "shape" in question else "Violet", "score": 0.9}]

    monkeypatch.setattr(make_prompts, "load_vqa", lambda model, seed=0: fake_vqa)
    out = make_prompts.main(_args(data_root=data, prompts_root=prompts, splits="train", vqa="fake", dry_run=True))
    a = out["train"][0]
    assert a["attributes"]["shape"] == "triangular" and a["attributes"]["colour"] == "violet"
    assert a["prompts"]["p3"] == "violet triangular polyp"
    assert asked[0] == "What is the shape of the polyp?"


def test_vqa_load_error_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="could not load VQA model"):
        make_prompts.load_vqa(str(tmp_path / "missing" / "model"))


# ----------------------------------------------------------------------------- perturbations
def _records():
    return [
        {"img_name": "a.png", "mask_name": "a.png", "prompts": {}, "attributes": dict(POLYP)},
        {"img_name": "b.png", "mask_name": "b.png", "prompts": {},
         "attributes": dict(POLYP, count=2, number="two", size=["small", "medium"], location=["left", "center"])},
        {"img_name": "c.png", "mask_name": "c.png", "prompts": {},
         "attributes": {"count": 0, "number": "no", "size": None, "location": None, "shape": None,
                        "colour": None, "bbox": None, "class_name": "polyp"}},
    ]


def test_perturb_opposite_drop_random_word():
    words = perturb_prompts.load_words()
    assert len(words) >= 150 and "large" not in words
    recs = _records()
    opp = perturb_prompts.perturb_manifest(recs, "kvasir", "size", "opposite", 0, words)
    assert opp[0]["attributes"]["size"] == ["large"]
    assert opp[0]["prompts"]["p4"] == "large pink round polyp"
    assert opp[0]["perturbation"] == {"attribute": "size", "kind": "opposite", "from": ["medium"],
                                      "to": ["large"], "changed": True}
    assert opp[1]["attributes"]["size"][0] == "large" and opp[1]["attributes"]["size"][1] in ("small", "large")
    assert opp[2]["perturbation"]["changed"] is False and opp[2]["prompts"]["p5"] == "no polyp"
    assert recs[0]["attributes"]["size"] == ["medium"]  # input untouched
    loc = perturb_prompts.perturb_manifest(recs, "kvasir", "location", "opposite", 0, words)
    assert loc[0]["prompts"]["p6"].endswith("located in the bottom right of the image")
    assert loc[1]["attributes"]["location"][0] == "right"

    drop = perturb_prompts.perturb_manifest(recs, "kvasir", "colour", "drop", 0, words)
    assert "colour" not in drop[0]["attributes"] and "pink" not in drop[0]["prompts"]["p6"]
    assert drop[0]["prompts"]["p6"] == "one medium round polyp, located in the top left of the image"
    dloc = perturb_prompts.perturb_manifest(recs, "kvasir", "location", "drop", 0, words)
    assert dloc[0]["prompts"]["p6"] == "one medium pink round polyp" and "located" not in dloc[0]["prompts"]["p9"][0]

    rnd = perturb_prompts.perturb_manifest(recs, "kvasir", "shape", "random_word", 0, words)
    word = rnd[0]["attributes"]["shape"]
    assert word in words and rnd[0]["prompts"]["p2"] == f"{word} polyp"
    rsize = perturb_prompts.perturb_manifest(recs, "kvasir", "size", "random_word", 0, words)
    assert len(rsize[1]["attributes"]["size"]) == 1 and rsize[1]["attributes"]["size"][0] in words


def test_perturb_radiology_values():
    words = ["zugzwang"]
    camus = [{"img_name": "x", "attributes": {"class_name": "myocardium", "view": "two-chamber", "age": 46,
                                              "sex": "female", "cycle": "end of the systole"}}]
    age = perturb_prompts.perturb_manifest(camus, "camus", "age", "opposite", 0, words)[0]
    assert age["attributes"]["age"] == 76 and "seventy-six-year-old" in age["prompts"]["p5"][0]
    rnd = perturb_prompts.perturb_manifest(camus, "camus", "age", "random_word", 0, words)[0]
    assert "of a zugzwang female" in rnd["prompts"]["p5"][0]
    cyc = perturb_prompts.perturb_manifest(camus, "camus", "cycle", "opposite", 0, words)[0]
    assert "end of the diastole cycle" in cyc["prompts"]["p3"][0]
    busi = [{"img_name": "y",
             "attributes": {"count": 1, "number": "one", "tumor_type": "benign", "class_name": "tumor"}}]
    assert perturb_prompts.perturb_manifest(busi, "busi", "tumor_type", "opposite", 0, words)[0]["prompts"]["p2"] == [
        "Malignant tumor in the breast ultrasound image.", "Irregular-shaped tumor in the breast ultrasound image."]


def test_perturb_cli_deterministic(tmp_path):
    src = _manifest(str(tmp_path / "prompts"), "kvasir", "test", _records())
    outs = []
    for k in range(2):
        out_dir = str(tmp_path / f"out{k}")
        perturb_prompts.main(perturb_prompts.get_args_parser().parse_args(
            ["--manifest", src, "--out", out_dir, "--seed", "3"]))
        outs.append(out_dir)
    names = sorted(os.listdir(outs[0]))
    assert len(names) == 5 * 3 + 1 and "test__colour__random_word.json" in names
    for n in names:
        if n != "test__index.json":
            assert open(os.path.join(outs[0], n)).read() == open(os.path.join(outs[1], n)).read()
    index = json.load(open(os.path.join(outs[0], "test__index.json")))
    assert index["source"] == os.path.abspath(src)
    size_opp = next(o for o in index["outputs"] if o["attribute"] == "size" and o["kind"] == "opposite")
    assert size_opp["changed"] == 2 and size_opp["unchanged"] == 1
    other = str(tmp_path / "other")
    perturb_prompts.main(perturb_prompts.get_args_parser().parse_args(
        ["--manifest", src, "--out", other, "--seed", "4", "--attributes", "color", "--kinds", "random_word"]))
    assert os.listdir(other)  # "color" alias accepted
    with pytest.raises(ValueError, match="unknown attribute"):
        perturb_prompts.main(perturb_prompts.get_args_parser().parse_args(
            ["--manifest", src, "--out", other, "--attributes", "mood"]))
    bare = _manifest(str(tmp_path / "prompts"), "kvasir", "bare", [{"img_name": "a.png"}])
    with pytest.raises(ValueError, match="run `python make_prompts.py"):
        perturb_prompts.main(perturb_prompts.get_args_parser().parse_args(["--manifest", bare, "--out", other]))


# ----------------------------------------------------------------------------- real data (optional)
@pytest.mark.skipif(not os.path.isdir(os.path.join(KVASIR, "masks")), reason="real Kvasir-SEG not present")
def test_real_kvasir_attributes():
    names = sorted(os.listdir(os.path.join(KVASIR, "masks")))[:20]
    counts = {}
    for n in names:
        mask = np.asarray(Image.open(os.path.join(KVASIR, "masks", n)).convert("L")) >= 128
        img = np.asarray(Image.open(os.path.join(KVASIR, "images", n)).convert("RGB"))
        a = A.mask_attributes(mask, img)
        assert a["count"] >= 1 and a["number"] in T.NUMBER_VALUES
        assert all(s in T.SIZE_VALUES for s in a["size"]) and all(v in T.LOCATION_VALUES for v in a["location"])
        assert a["shape"] in T.SHAPE_VALUES and a["colour"] in T.COLOUR_VALUES
        x1, y1, x2, y2 = a["bbox"]
        assert 0 <= x1 <= x2 < mask.shape[1] and 0 <= y1 <= y2 < mask.shape[0]
        counts[a["colour"]] = counts.get(a["colour"], 0) + 1
    # polyps are reddish: the pink/red/brown/orange family covers almost all of them
    assert sum(counts.get(c, 0) for c in ("pink", "red", "brown", "orange")) >= 18
