"""Text reliance: the wrong-prompt conditions, the perturbations, and text_report.py on a tiny trained run."""
import csv
import json
import os
import random

import pytest

import text_report
from datasets import prompt_templates as T
from datasets.perturb import perturb_records
from vlsm.text_report import condition_records, evaluated_text, gibberish
from vlsm.training import default_args, run_training


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from datasets.synthetic import generate
    root = tmp_path_factory.mktemp("text_reliance")
    generate(str(root / "data"), str(root / "pj"), seed=3, counts={"train": 12, "val": 4, "test": 6})
    return str(root / "data"), str(root / "pj"), root


def _records(tiny):
    with open(os.path.join(tiny[1], "synthetic", "test.json")) as f:
        return json.load(f)


def test_gibberish_keeps_length_and_spaces():
    text = "one small red round polyp, located in the top left"
    g = gibberish(text, random.Random(0))
    assert len(g) == len(text) and g != text
    assert [i for i, c in enumerate(g) if not c.isalpha()] == [i for i, c in enumerate(text) if not c.isalpha()]
    assert gibberish("", random.Random(0)) == ""


def test_wrong_prompt_conditions(tiny):
    recs = _records(tiny)
    right = {(r["img_name"], r["mask_name"]): evaluated_text(r, "p3") for r in recs}
    other = condition_records(recs, "p3", "other_image")
    for r in other:  # the text of another image's record, never one of its own image's
        own = {t for (img, _), t in right.items() if img == r["img_name"]}
        assert r["prompts"]["p3"] not in own
    swapped = condition_records(recs, "p3", "other_target")
    assert swapped and all(r["prompts"]["p3"] != right[(r["img_name"], r["mask_name"])] for r in swapped)
    assert all(r["prompts"]["p3"] in {t for (img, _), t in right.items() if img == r["img_name"]} for r in swapped)
    assert {r["prompts"]["p3"] for r in condition_records(recs, "p3", "empty")} == {""}


def test_perturbations_of_synthetic_prompts(tiny):
    recs = _records(tiny)
    r = recs[0]
    colour, shape = r["attributes"]["colour"], r["attributes"]["shape"]
    new = perturb_records([r], "synthetic", "colour", "opposite")[0]
    assert new["prompts"]["p3"] == r["prompts"]["p3"].replace(colour, T.OPPOSITES["colour"][colour])
    assert new["perturbation"]["changed"] and new["perturbation"]["from"] == colour
    sh = perturb_records([r], "synthetic", "shape", "opposite")[0]["prompts"]["p3"]
    assert sh.endswith(shape) and sh != r["prompts"]["p3"]  # the shape word changes, the class name stays
    size = perturb_records([r], "synthetic", "size", "random_word", seed=1)[0]["prompts"]
    assert size["p3"] == r["prompts"]["p3"] and size["p4"] != r["prompts"]["p4"]  # p3 names no size
    dropped = perturb_records([r], "synthetic", "location", "drop")[0]["prompts"]["p6"]
    assert dropped == r["prompts"]["p5"]
    assert perturb_records(recs, "synthetic", "colour", "opposite", seed=4) == \
        perturb_records(recs, "synthetic", "colour", "opposite", seed=4)  # seeded


def test_perturbations_of_real_prompts_rebuild_from_attributes():
    attrs = {"class_name": "polyp", "count": 1, "number": "one", "size": ["small"], "location": ["top left"],
             "shape": "round", "colour": "pink"}
    rec = {"img_name": "a.jpg", "mask_name": "a.jpg", "attributes": attrs, "prompts": T.build_prompts("kvasir", attrs)}
    new = perturb_records([rec], "kvasir", "size", "opposite")[0]
    assert new["prompts"]["p4"] == "large pink round polyp" and rec["prompts"]["p4"] == "small pink round polyp"
    loc = perturb_records([rec], "kvasir", "location", "opposite")[0]["prompts"]["p6"]
    assert loc.endswith("located in the bottom right of the image")
    with pytest.raises(ValueError, match="make_prompts"):
        perturb_records([{"img_name": "b", "mask_name": "b", "prompts": {}}], "kvasir", "size", "opposite")


def test_text_report_on_a_trained_run(tiny, tmp_path):
    data_root, prompts_root, root = tiny
    run = run_training(default_args(model="clipseg", size="tiny", input_size=64, data="synthetic", prompt="p3",
                                    epochs=1, max_steps_per_epoch=1, batch_size=4, workers=0, no_test=True,
                                    data_root=data_root, prompts_root=prompts_root, output_dir=str(root / "runs"),
                                    out=str(root / "runs" / "r")))["run_dir"]
    out = str(tmp_path / "tr")
    rep = text_report.main(text_report.get_args_parser().parse_args(
        ["--checkpoint", run, "--out", out, "--workers", "0", "--kinds", "opposite"]))[0]
    by = {c["condition"]: c for c in rep["conditions"]}
    # p3 = colour + shape + class: size/location/number perturbations leave it unchanged and are left out
    assert set(by) == {"right", "empty", "other_target", "other_image", "gibberish", "colour_opposite",
                       "shape_opposite"}
    assert rep["text_gain"] == pytest.approx(by["right"]["dice_mean"] - by["empty"]["dice_mean"])
    assert by["other_image"]["n"] == by["right"]["n"]
    assert by["other_image"]["survival"] == pytest.approx(by["other_image"]["dice_mean"] / by["right"]["dice_mean"])

    def per_image(cond):
        with open(os.path.join(out, f"synthetic__{cond}", "per_image.csv")) as f:
            return {(r["img_name"], r["mask_name"]): float(r["dice"]) for r in csv.DictReader(f)}

    right, swapped = per_image("right"), per_image("other_target")
    ref = sum(right[k] for k in swapped) / len(swapped)  # the same records as the swapped set
    assert by["other_target"]["survival"] == pytest.approx(by["other_target"]["dice_mean"] / ref)
    s = json.load(open(os.path.join(out, "synthetic__gibberish", "summary.json")))
    assert s["condition"] == "gibberish" and s["step"] == "text_reliance" and s["model"] == "clipseg"
    md = open(os.path.join(out, "text_reliance.md")).read()
    assert "Text gain (right − empty)" in md and "gibberish (same length)" in md and "threshold 0.5" in md
    assert open(os.path.join(out, "text_reliance.png"), "rb").read(4) == b"\x89PNG"
