"""results.py / vlsm.results: aggregation over seeds, relative changes, tables and plots, on hand-made summaries."""
import csv
import json
import math
import os

import pytest

import results
from util.metrics import metric_card
from vlsm.results import write_report
from vlsm.results.aggregate import aggregate, mean_sd
from vlsm.results.collect import Unreadable, collect, summary_row
from vlsm.results.tables import fmt

CARD = metric_card(0.5)


def _summary(folder, dice, *, std=0.1, n=10, data="kvasir", prompt="p6", manifest=None, **extra):
    os.makedirs(folder, exist_ok=True)
    s = {"dice_mean": dice, "dice_std": std, "iou_mean": dice - 0.1, "iou_std": std, "n": n, "data": data,
         "split": "test", "prompt": prompt, "manifest": manifest, "swap_prompts": False, "threshold": 0.5,
         **extra, "metric_card": CARD}
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(s, f)
    return s


def _study(root, cell, step, dice, *, model="clipseg", train="kvasir", test="kvasir", prompt="p6", seed=0,
           setting="finetuned", **kw):
    extra = {"study": "t", "cell": cell, "step": step, "setting": setting, "model": model, "size": "tiny",
             "train_data": train, "train_prompt": prompt if setting == "finetuned" else "", "test_data": test,
             "preset": "midl" if setting == "finetuned" else "", "seed": seed, "freeze": "none"}
    extra.update(kw.pop("extra", {}))
    label = f"{step}__{test}__{kw.get('prompt_eval', prompt)}" + (f"__{kw['label']}" if "label" in kw else "")
    return _summary(os.path.join(root, "cells", cell, "run", "eval", label), dice, data=test,
                    prompt=kw.get("prompt_eval", prompt), **extra)


@pytest.fixture()
def study_root(tmp_path):
    root = str(tmp_path / "study")
    # clipseg on kvasir, three seeds: test Dice 0.80 / 0.90 / 0.85 -> mean 0.85, sample std 0.05
    for seed, d in ((0, 0.80), (1, 0.90), (2, 0.85)):
        cell = f"ft__clipseg__kvasir__p6__midl__s{seed}__none"
        _study(root, cell, "test", d, seed=seed)
        _study(root, cell, "ood", d - 0.2, seed=seed, test="clinicdb")
    # one seed of unet, and a pooled clipseg
    _study(root, "ft__unet__kvasir__p6__midl__s0__none", "test", 0.70, model="unet", extra={"size": "tiny"})
    _study(root, "ft__clipseg__kvasir+clinicdb__p6__midl__s0__none", "test", 0.60, train="kvasir,clinicdb")
    _study(root, "ft__clipseg__kvasir+clinicdb__p6__midl__s0__none", "test", 0.50, train="kvasir,clinicdb",
           test="clinicdb")
    # perturbation of seed 0: 0.80 -> 0.60 is -25 %; of seed 1: 0.90 -> 0.90 is 0 %  => mean -12.5, sd 17.68
    for seed, d in ((0, 0.60), (1, 0.90)):
        _study(root, f"ft__clipseg__kvasir__p6__midl__s{seed}__none", "perturbation", d, seed=seed,
               label="size__opposite", extra={"perturbation": {"attribute": "size", "kind": "opposite"}})
    # zero-shot, two prompts
    _study(root, "zs__clipseg__kvasir", "zeroshot", 0.30, setting="zeroshot", prompt="p1", train="")
    _study(root, "zs__clipseg__kvasir", "zeroshot", 0.40, setting="zeroshot", prompt="p6", train="")
    return root


def test_mean_and_sample_std():
    m, sd = mean_sd([0.8, 0.9, 0.85])
    assert m == pytest.approx(0.85) and sd == pytest.approx(0.05)
    m, sd = mean_sd([0.7])
    assert m == pytest.approx(0.7) and math.isnan(sd)


def test_aggregation_over_seeds_and_relative_change(study_root):
    rows = collect([study_root]).rows
    assert len(rows) == 13
    agg = {(a["step"], a["model"], a["train_data"], a["test_data"], a["prompt"]): a for a in aggregate(rows)}
    t = agg[("test", "clipseg", "kvasir", "kvasir", "p6")]
    assert t["n_seeds"] == 3 and t["dice_mean"] == pytest.approx(0.85) and t["dice_sd_seeds"] == pytest.approx(0.05)
    assert t["dice_sd_images"] == pytest.approx(0.1) and t["n"] == 10
    assert fmt(t) == "85.00 ± 5.00"
    o = agg[("ood", "clipseg", "kvasir", "clinicdb", "p6")]
    assert o["dice_mean"] == pytest.approx(0.65) and o["dice_sd_seeds"] == pytest.approx(0.05)
    u = agg[("test", "unet", "kvasir", "kvasir", "p6")]
    assert u["n_seeds"] == 1 and math.isnan(u["dice_sd_seeds"]) and fmt(u) == "70.00 ± 10.00*"
    p = agg[("perturbation", "clipseg", "kvasir", "kvasir", "p6")]
    assert p["rel_change_pct"] == pytest.approx(-12.5)
    assert p["rel_change_sd_seeds"] == pytest.approx(math.sqrt(2 * 12.5 ** 2))


def test_report_tables_csv_and_plots(study_root, tmp_path):
    out = str(tmp_path / "report")
    written = write_report([study_root], out)
    md = open(written["markdown"]).read()
    assert "## Table 2 layout" in md and "## Table 3 layout" in md and "zero-shot" in md and "Perturbation" in md
    assert "| Individual | clipseg | 85.00 ± 5.00 |" in md
    assert "| Pooled kvasir + clinicdb | clipseg | 60.00 ± 10.00* | 50.00 ± 10.00* |" in md
    assert "| kvasir | clipseg | [85.00 ± 5.00] | 65.00 ± 5.00 |" in md          # Table 3: in-distribution bracketed
    assert "| kvasir | clipseg | 30.00 ± 10.00* | 40.00 ± 10.00* |" in md       # zero-shot p1, p6
    assert "-12.50 ± 17.68" in md
    cards = md.count("*Metric card*")
    assert cards == len(written["tables"]) and "Threshold: 0.5 (clipseg" in md and "Empty-mask rule: both empty" in md
    with open(written["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13 and {"model", "train_data", "test_data", "prompt", "preset", "seed", "n", "dice_mean",
                                "dice_std"} <= set(rows[0])
    with open(written["mean_csv"]) as f:
        mean_rows = {(r["step"], r["model"], r["train_data"], r["test_data"], r["prompt"]): r
                     for r in csv.DictReader(f)}
    assert float(mean_rows[("test", "clipseg", "kvasir", "kvasir", "p6")]["dice_sd_seeds"]) == pytest.approx(0.05)
    names = sorted(os.path.basename(p) for p in written["plots"])
    assert any(n.startswith("dice_by_prompt_zero-shot") for n in names)
    assert any(n.startswith("ood_heatmap") for n in names) and "perturbation.png" in names
    for p in written["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_plain_run_summaries_get_their_fields_from_args_json(tmp_path):
    """evaluate.py / train.py results (no study fields): model, training data, seed come from the run's args.json,
    the step from the data and prompt; perturbed manifests are recognised by name."""
    run = tmp_path / "runs" / "kvasir" / "cris" / "p6" / "stamp"
    run.mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"model": "cris", "data": "kvasir", "prompt": "p6", "preset": "midl",
                                               "seed": 3, "size": "base", "freeze_image_encoder": True}))
    _summary(str(run / "eval" / "kvasir_test_p6"), 0.9)
    _summary(str(run / "eval" / "etis_test_p6"), 0.5, data="etis")
    _summary(str(run / "eval" / "kvasir_test_p1"), 0.8, prompt="p1")
    _summary(str(run / "eval" / "kvasir_test_p6_pert"), 0.45, manifest="/x/test__location__opposite.json")
    rows = {os.path.basename(r["results_dir"]): r for r in collect([str(tmp_path / "runs")]).rows}
    r = rows["kvasir_test_p6"]
    assert (r["model"], r["train_data"], r["seed"], r["freeze"], r["step"]) == ("cris", "kvasir", 3, "image", "test")
    assert rows["etis_test_p6"]["step"] == "ood" and rows["kvasir_test_p1"]["step"] == "cross_prompt"
    p = rows["kvasir_test_p6_pert"]
    assert (p["step"], p["attribute"], p["kind"]) == ("perturbation", "location", "opposite")
    agg = {a["step"]: a for a in aggregate(list(rows.values()))}
    assert agg["perturbation"]["rel_change_pct"] == pytest.approx(-50.0)
    with pytest.raises(Unreadable):
        summary_row(str(tmp_path / "nothing.json"))


def test_results_script(study_root, tmp_path, capsys):
    written = results.main(results.get_args_parser().parse_args([study_root, "--out", str(tmp_path / "r")]))
    assert os.path.isfile(written["markdown"]) and "Table 2 layout" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        results.main(results.get_args_parser().parse_args([str(tmp_path / "r"), "--out", str(tmp_path / "r2")]))


def test_unreadable_results_are_listed_not_dropped(study_root, tmp_path, capsys):
    """A results file cut short (a kill during an older, non-atomic write) or not a results file is listed in
    tables.md, in the returned dict and on stderr; the rows that can be read are all there."""
    cut = os.path.join(study_root, "cells", "ft__unet__clinicdb__p6__midl__s0__none", "run", "eval", "test__x__p6")
    _summary(cut, 0.5)
    text = open(os.path.join(cut, "summary.json")).read()
    open(os.path.join(cut, "summary.json"), "w").write(text[: len(text) // 2])
    odd = os.path.join(study_root, "cells", "odd")
    os.makedirs(odd)
    json.dump({"not": "a summary"}, open(os.path.join(odd, "summary.json"), "w"))
    open(os.path.join(odd, "text_reliance.json"), "w").write('{"conditions": [')
    run = tmp_path / "runs" / "r"
    (run / "eval").mkdir(parents=True)
    (run / "args.json").write_text('{"model": "cl')
    _summary(str(run / "eval" / "kvasir_test_p6"), 0.7)

    written = write_report([study_root, str(tmp_path / "runs")], str(tmp_path / "report"), plots=False)
    bad = {u["path"]: u["reason"] for u in written["unreadable"]}
    assert sorted(bad) == sorted([os.path.join(cut, "summary.json"), os.path.join(odd, "summary.json"),
                                  os.path.join(odd, "text_reliance.json"), str(run / "args.json")])
    assert bad[os.path.join(cut, "summary.json")].startswith("cannot be read as JSON")
    assert "no dice_mean" in bad[os.path.join(odd, "summary.json")]
    assert "lack its training fields" in bad[str(run / "args.json")]
    assert written["rows"] == 14  # the 13 of the study and the plain run's row, kept without its run's fields
    md = open(written["markdown"]).read()
    assert "## Results that could not be read (4)" in md and f"- `{os.path.join(cut, 'summary.json')}`: cannot" in md
    err = capsys.readouterr().err
    assert err.count("[results] not counted:") == 4 and os.path.join(cut, "summary.json") in err


def test_hd95_and_data_efficiency_tables(tmp_path):
    """HD95 reaches results.csv and the VLSM-Adapter layout; a train_fraction sweep gives the efficiency table and
    plot, one row per way of training (full fine-tuning, a PEFT method), one column per fraction."""
    root = str(tmp_path / "study")
    for method, dices in (("", (0.50, 0.70, 0.80)), ("peft=lora", (0.40, 0.65, 0.78))):
        for frac, d in zip(("0.1", "0.5", "1"), dices):
            sweep = " ".join(filter(None, [method, f"train_fraction={frac}"]))
            cell = f"ft__clipseg__kvasir__p6__midl__s0__none__{sweep.replace(' ', '__')}"
            _study(root, cell, "test", d, extra={"sweep": sweep, "hd95_mean": 10 * (1 - d), "hd95_unit": "mm",
                                                 "hd95_excluded": 1})
    out = write_report(root, str(tmp_path / "rep"))
    rows = list(csv.DictReader(open(out["csv"])))
    assert {r["hd95_unit"] for r in rows} == {"mm"} and float(rows[0]["hd95_mean"]) > 0
    text = open(out["markdown"]).read()
    eff = text[text.index("## Data efficiency"):].split("\n\n")[1].splitlines()
    assert eff[0] == "| training | 10% | 50% | 100% |"
    assert eff[2].startswith("| full fine-tuning | 50.00") and eff[3].startswith("| lora | 40.00")
    assert any(p.endswith(".png") and "efficiency_" in p for p in out["plots"])
    assert "Dice / IoU / HD95" not in text  # only sweeps without a fraction, or whole-split runs, go there
    _study(root, "ft__clipseg__kvasir__p6__midl__s0__none", "test", 0.9,
           extra={"hd95_mean": 2.5, "hd95_unit": "mm", "hd95_excluded": 0})
    text = open(write_report(root, str(tmp_path / "rep2"))["markdown"]).read()
    assert "| clipseg | full fine-tuning | 90.00 / 80.00 / 2.50 mm |" in text
