import json
import os

import numpy as np
import pytest
from PIL import Image

from datasets import BadSampleError, ManifestDataset, ManifestError, SegTransform, build_dataset, collate, read_mask
from datasets.manifest import load_manifest, swap_prompts

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def write_pair(folder, stem, h=40, w=60, mask_mode="L", box=(10, 5, 30, 25)):
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    img = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(folder, "images", stem + ".png"))
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = 255
    Image.fromarray(m).convert(mask_mode).save(os.path.join(folder, "masks", stem + ".png"))
    return m > 0


def make_ds(folder, records, **kw):
    path = os.path.join(folder, "m.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return ManifestDataset(path, os.path.join(folder, "images"), os.path.join(folder, "masks"),
                           transform=SegTransform(32, MEAN, STD), **kw)


def rec(stem, **prompts):
    return {"img_name": stem + ".png", "mask_name": stem + ".png", "prompts": prompts or {"p1": "polyp"}}


def test_synthetic_loader_shapes_prompts_and_original_size(small_synthetic):
    data_root, prompts_root = small_synthetic
    ds = build_dataset("synthetic", "val", prompt="p3", data_root=data_root, prompts_root=prompts_root,
                       input_size=64, mean=MEAN, std=STD, return_original=True)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    h, w = item["orig_size"].tolist()
    assert item["orig_mask"].shape == (h, w) and 96 <= h <= 128 and 96 <= w <= 128
    # the p3 prompt names the record's own object
    r = ds.records[0]
    assert item["text"] == r["prompts"]["p3"] and r["attributes"]["colour"] in item["text"]
    # the mask is the named object's: its bbox matches the record
    ys, xs = np.nonzero(item["orig_mask"].numpy())
    assert [xs.min(), ys.min(), xs.max(), ys.max()] == r["bbox"]
    batch = collate([ds[i] for i in range(3)])
    assert batch["image"].shape[0] == 3 and len(batch["orig_mask"]) == 3


def test_synthetic_prompts_name_exactly_one_object_per_image(small_synthetic):
    _, prompts_root = small_synthetic
    records = load_manifest(os.path.join(prompts_root, "synthetic", "train.json"))
    by_img = {}
    for r in records:
        by_img.setdefault(r["img_name"], []).append(r)
    assert all(2 <= len(v) <= 3 for v in by_img.values())
    for recs in by_img.values():
        for key in ("p1", "p3", "p5", "p6"):
            texts = [r["prompts"][key] for r in recs]
            assert len(set(texts)) == len(texts)  # different objects -> different prompts


def test_list_prompts_random_in_training_first_in_eval_all_with_flag(tmp_path):
    write_pair(tmp_path, "a")
    records = [rec("a", p7=["one", "two", "three"])]
    assert make_ds(tmp_path, records, prompt="p7")[0]["text"] == "one"
    texts = {make_ds(tmp_path, records, prompt="p7", train=True)[0]["text"] for _ in range(40)}
    assert texts == {"one", "two", "three"}
    ds = make_ds(tmp_path, records, prompt="p7", all_prompts=True)
    assert [ds[i]["text"] for i in range(len(ds))] == ["one", "two", "three"]
    ds = make_ds(tmp_path, [rec("a", p1="x", p2="y")], prompt="random", train=True)
    assert {ds[0]["text"] for _ in range(40)} == {"x", "y"}


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "1", "I;16"])
def test_mask_formats_read_the_same(tmp_path, mode):
    truth = write_pair(tmp_path, "a", mask_mode=mode if mode != "I;16" else "L")
    path = os.path.join(tmp_path, "masks", "a.png")
    if mode == "I;16":
        Image.fromarray((truth.astype(np.uint16) * 65535)).save(path)
    assert np.array_equal(read_mask(path), truth)


def test_16_bit_mask_with_8_bit_values_and_converters_share_the_rule(tmp_path):
    from datasets.converters.common import PrepareError, binarise
    from datasets.io import mask_to_binary
    m = np.zeros((20, 20), np.uint16)
    m[2:6, 3:9] = 255  # a 16-bit file holding 0/255
    Image.fromarray(m).save(tmp_path / "m16.png")
    assert read_mask(str(tmp_path / "m16.png")).sum() == 24
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[4:8, 4:8, 1] = 200
    assert binarise(rgb).sum() == 16 and np.array_equal(binarise(rgb), mask_to_binary(rgb))
    with pytest.raises(PrepareError, match="label map"):
        binarise(np.array([[0, 1], [2, 3]], np.uint8), "labels.png")


def test_mask_values_0_1_and_jpeg_noise(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[5:10, 5:10] = 1
    Image.fromarray(m).save(tmp_path / "01.png")
    assert read_mask(str(tmp_path / "01.png")).sum() == 25
    noisy = m * 240 + (np.arange(400).reshape(20, 20) % 9).astype(np.uint8)  # background noise 0..8
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    assert read_mask(str(tmp_path / "noisy.png")).sum() == 25


def test_label_map_mask_is_refused(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[:5] = 1
    m[5:10] = 2
    m[10:15] = 3
    Image.fromarray(m).save(tmp_path / "lab.png")
    with pytest.raises(BadSampleError, match="label map"):
        read_mask(str(tmp_path / "lab.png"))


def test_missing_files_and_size_mismatch_name_the_file(tmp_path):
    write_pair(tmp_path, "a")
    ds = make_ds(tmp_path, [rec("a"), rec("missing")])
    with pytest.raises(BadSampleError, match="missing.png"):
        ds[1]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(os.path.join(tmp_path, "masks", "a.png"))
    with pytest.raises(BadSampleError, match="must have their image's size"):
        ds[0]


def test_skip_bad_samples_reports_them(tmp_path):
    write_pair(tmp_path, "a")
    ds = make_ds(tmp_path, [rec("a"), rec("missing")], on_bad_sample="skip")
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape[0] == 1 and len(batch["skipped"]) == 1 and "missing.png" in batch["skipped"][0]


@pytest.mark.parametrize("records, match", [
    ({"img_name": "a"}, "JSON list"),
    ([{"img_name": "a.png", "prompts": {}}], "record 0: missing field 'mask_name'"),
    ([{"img_name": "a.png", "mask_name": 3, "prompts": {}}], "record 0: field 'mask_name' must be str"),
    ([{"img_name": "a.png", "mask_name": "a.png", "prompts": {"p1": 5}}], "prompt 'p1' must be a string"),
    ({"images": [], "annotations": []}, "COCO annotation file"),  # duplicates warn: tests/test_import_manifests.py
])
def test_bad_manifests(tmp_path, records, match):
    p = tmp_path / "m.json"
    p.write_text(json.dumps(records))
    with pytest.raises(ManifestError, match=match):
        load_manifest(str(p))


def test_unknown_prompt_key_names_record_and_fix(tmp_path):
    write_pair(tmp_path, "a")
    with pytest.raises(ManifestError, match=r"record 0 \(a.png\): no prompt 'p5' .*make_prompts.py"):
        make_ds(tmp_path, [rec("a", p1="polyp")], prompt="p5")


def test_swap_prompts_uses_another_target_of_the_same_image():
    recs = [{"img_name": "i", "mask_name": f"m{k}", "prompts": {"p1": f"obj{k}"}} for k in range(3)]
    recs.append({"img_name": "j", "mask_name": "n0", "prompts": {"p1": "alone"}})
    out, dropped = swap_prompts(recs)
    assert dropped == 1 and [r["prompts"]["p1"] for r in out] == ["obj1", "obj2", "obj0"]
    assert [r["mask_name"] for r in out] == ["m0", "m1", "m2"]


def test_real_kvasir_through_a_manifest(tmp_path, kvasir_dir):
    names = sorted(os.listdir(os.path.join(kvasir_dir, "images")))[:4]
    man = tmp_path / "kvasir.json"
    man.write_text(json.dumps([{"img_name": n, "mask_name": n, "prompts": {"p1": "polyp"}} for n in names]))
    ds = ManifestDataset(str(man), os.path.join(kvasir_dir, "images"), os.path.join(kvasir_dir, "masks"),
                         prompt="p1", transform=SegTransform(64, MEAN, STD), return_original=True)
    for i in range(len(names)):
        item = ds[i]
        with Image.open(os.path.join(kvasir_dir, "images", names[i])) as im:
            assert tuple(item["orig_size"].tolist()) == (im.height, im.width)
        ref = np.asarray(Image.open(os.path.join(kvasir_dir, "masks", names[i])).convert("L")) >= 128
        assert np.array_equal(item["orig_mask"].numpy(), ref)
        assert 0 < item["mask"].mean() < 1 and item["image"].shape == (3, 64, 64)
