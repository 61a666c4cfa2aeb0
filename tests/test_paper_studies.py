"""The paper's studies run what the paper ran (issue 19): grids honour their presets, medvlsm-code is what the
released code computed, sweeps (Table 4), the cosine schedule, the released prompts perturbed in their own wording
(Figure 3) and by another value of the dataset (Figure 4), the PubMedBERT probe (Table 5), reports as prompts
(Table 8).  Tiny models and temporary files only; the paper's released manifests are read from
../shared/reference/medvlsm_anns when present."""
from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from conftest import SHARED_ROOT

import study as study_script
from models import get_preset
from vlsm import study as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_STUDIES = ("table2", "table3", "figure2", "figure3", "tables6_7", "table4", "table8")
RELEASED = os.path.join(SHARED_ROOT, "reference", "medvlsm_anns")


def write(tmp_path, text: str, name: str = "s.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture()
def registry(tmp_path):
    """A data_root registering Table 8's user dataset (datasets.make_manifest's datasets.json)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "datasets.json").write_text(json.dumps(
        {"datasets": {"mimic_lungs": {"class_name": "lungs", "kind": "chest x-ray"}}}))
    return str(tmp_path / "data")


# ----------------------------------------------------------------------------------- grids honour their presets
def test_a_medvlsm_code_grid_trains_the_clipseg_family_decoder_only_with_dice_only(tmp_path):
    path = write(tmp_path, '[[grid]]\nmodels = ["clipseg", "biomedclipseg", "biomedclipseg_d", "cris", "unet"]\n'
                           'data = ["kvasir"]\nprompts = ["p6"]\npresets = ["medvlsm-code"]\n')
    st = S.load_study(path, output_dir=str(tmp_path / "out"))
    by = {c.model: c for c in st.cells}
    for m in ("clipseg", "biomedclipseg", "biomedclipseg_d"):
        c = by[m]
        settings, _ = S.resolved_settings(c)
        assert c.id == f"ft__{m}__kvasir__p6__medvlsm-code__s42__both" and not c.overrides
        assert settings["freeze_image_encoder"] and settings["freeze_text_encoder"]
        assert (settings["loss"], settings["seed"], settings["frozen_mode"]) == ("dice-code", 42, "train")
    assert S.resolved_settings(by["biomedclipseg"])[0]["biomedclip_taps"] == "code"
    assert by["cris"].freeze == "none" and S.resolved_settings(by["cris"])[0]["loss"] == "dice-code"
    assert S.resolved_settings(by["unet"])[0]["loss"] == "dice-present"


def test_an_explicit_setting_that_changes_the_preset_is_recorded_and_printed(tmp_path, capsys):
    path = write(tmp_path, '[train]\nepochs = 100\n[[grid]]\nmodels = ["clipseg"]\ndata = ["kvasir"]\n'
                           'presets = ["midl", "medvlsm-code"]\nfreeze = ["none"]\n')
    st = S.load_study(path, output_dir=str(tmp_path / "out"))
    code = st.cell("ft__clipseg__kvasir__p1__medvlsm-code__s42__none")
    assert code.overrides == {"epochs": {"set": 100, "preset": 1000},
                              "freeze_image_encoder": {"set": False, "preset": True},
                              "freeze_text_encoder": {"set": False, "preset": True}}
    assert st.cell("ft__clipseg__kvasir__p1__midl__s0__none").overrides == {"epochs": {"set": 100, "preset": 1000}}
    study_script.main(study_script.get_args_parser().parse_args([path, "--output-dir", str(tmp_path / "out"),
                                                                  "--dry-run"]))
    assert "changes preset medvlsm-code: epochs=100 (preset 1000), freeze_image_encoder=False (preset True)" \
        in capsys.readouterr().out


@pytest.mark.parametrize("name", PAPER_STUDIES)
def test_dry_run_json_of_every_paper_study_shows_the_presets_settings(name, registry, capsys):
    argv = [os.path.join(ROOT, "studies", f"{name}.toml"), "--dry-run", "--json", "--output-dir", "unused"]
    records = study_script.main(study_script.get_args_parser().parse_args(
        argv + (["--data-root", registry] if name == "table8" else [])))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == json.loads(json.dumps(records, default=str)) and lines
    for r in lines:
        assert {"id", "model", "data", "prompt", "preset", "seed", "steps", "state", "settings"} <= set(r)
        if r["kind"] == "finetune":
            preset = get_preset(r["model"], r["preset"])
            assert r["settings"]["epochs"] == preset["epochs"] == 1000 and "epochs" not in r["overrides"]
            assert r["settings"]["early_stop"] == preset["early_stop"] and r["seed"] == r["settings"]["seed"]
        if r["model"] == "cris":  # no CRIS cell without the CRIS weights: they name the file they need
            assert r["settings"]["cris_checkpoint"] == "weights/cris_best.pth"
            assert r["state"] == "refused" and "cris_checkpoint weights/cris_best.pth does not exist" in r["refused"]
        else:
            assert "cris_checkpoint" not in r["settings"]


def test_table4_and_table8_expand(registry):
    t4 = S.load_study(os.path.join(ROOT, "studies", "table4.toml"))
    assert len(t4.cells) == 2 * 2 * 6 * 3 * 4
    ids = {c.id for c in t4.cells}
    assert "ft__clipseg__kvasir__p6__midl__s0__none__batch_size=16__lr=1e-05__optimizer=adam__scheduler=cosine" in ids
    c = t4.cell("ft__cris__kvasir__p6__midl__s0__none__batch_size=32__lr=2e-05__optimizer=adamw__scheduler=plateau")
    assert c.overrides == {} and c.sweep == {"batch_size": 32, "lr": 2e-5, "optimizer": "adamw",
                                             "scheduler": "plateau"}   # the paper's choice changes nothing
    assert len(S.select(t4.cells, ["lr=0.002", "model=clipseg"])) == 2 * 3 * 4
    t8 = S.load_study(os.path.join(ROOT, "studies", "table8.toml"), data_root=registry)
    assert sorted(c.id for c in t8.cells) == [
        "ft__clipseg__mimic_lungs__p0__midl__s0__none", "ft__clipseg__mimic_lungs__p1__midl__s0__none",
        "ft__cris__mimic_lungs__p0__midl__s0__none", "ft__cris__mimic_lungs__p1__midl__s0__none",
        "zs__clipseg__mimic_lungs", "zs__cris__mimic_lungs"]
    assert [s.label for s in t8.cell("zs__clipseg__mimic_lungs").steps] == [
        "zeroshot__mimic_lungs__p0", "zeroshot__mimic_lungs__p1"]


@pytest.mark.parametrize("sweep, message", [
    ("learning_rate = [1e-3]", "grid 'g': \\[grid.sweep\\] 'learning_rate' is not a train.py option; valid options: "
                               ".*lr"),
    ("lr = ['fast']", "grid 'g': \\[grid.sweep\\] lr = 'fast': expected a number"),
    ("batch_size = [16.5]", "grid 'g': \\[grid.sweep\\] batch_size = 16.5: expected an integer"),
    ("scheduler = ['cosine', 'linear']", "scheduler = 'linear': expected one of plateau, constant, cosine"),
    ("seed = [1, 2]", "grid 'g': \\[grid.sweep\\] may not set 'seed'"),
    ("drop_last = ['yes']", "drop_last = 'yes': expected true or false"),
])
def test_a_bad_sweep_is_refused_naming_the_grid_and_the_key(tmp_path, sweep, message):
    path = write(tmp_path, f'[[grid]]\nname = "g"\nmodels = ["clipseg"]\ndata = ["kvasir"]\n[grid.sweep]\n{sweep}\n')
    with pytest.raises(ValueError, match=message):
        S.load_study(path)


def test_a_train_value_of_the_wrong_type_is_refused(tmp_path):
    path = write(tmp_path, '[train]\nepochs = "ten"\n[[grid]]\nname = "g"\nmodels = ["clipseg"]\ndata = ["kvasir"]\n')
    with pytest.raises(ValueError, match="grid 'g': \\[train\\] epochs = 'ten': expected an integer"):
        S.load_study(path)


# ----------------------------------------------------------------------------------- training pieces
def test_cosine_schedule_anneals_to_zero_over_the_epochs():
    from vlsm import cli
    from vlsm.optim import build_scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = build_scheduler(opt, "cosine", epochs=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.1 * (1 + 2 ** -0.5) / 2, 0.05, 0.1 * (1 - 2 ** -0.5) / 2])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert cli.train_options().parse_args(["--scheduler", "cosine"]).scheduler == "cosine"


def test_the_codes_losses():
    from vlsm.losses import SegLoss, present_dice_loss, soft_dice_loss
    logits = torch.randn(3, 1, 8, 8)
    target = torch.zeros(3, 1, 8, 8)
    target[0, 0, 2:5, 2:5] = 1
    code = SegLoss("dice-code")(logits, target)
    assert set(code) == {"dice_loss", "loss"} and torch.allclose(code["loss"], soft_dice_loss(logits, target, 1e-5))
    present = SegLoss("dice-present")(logits, target)["loss"]   # only image 0 has foreground
    assert torch.allclose(present, soft_dice_loss(logits[:1], target[:1], 1e-5))
    empty = present_dice_loss(logits.requires_grad_(), torch.zeros_like(target))
    empty.backward()
    assert empty.item() == 0.0 and logits.grad.abs().sum() == 0


def test_drop_last_keeps_every_batch_but_one_of_a_single_image():
    from vlsm.training import default_args, drop_last
    keep, drop = default_args(drop_last=False), default_args(drop_last=True)
    assert not drop_last(keep, 490, 128) and drop_last(drop, 490, 128)
    assert drop_last(keep, 129, 128)                      # a last batch of one image cannot train BatchNorm
    assert not drop_last(drop, 100, 128)                  # a split within one batch is never cut
    assert drop_last(default_args(), 490, 128)            # a run saved before the option: as it ran then


def test_frozen_mode_train_leaves_frozen_encoders_in_train_mode():
    from models import create_model
    m = create_model("clipseg", weights=None, size="tiny", freeze_image_encoder=True, freeze_text_encoder=True)
    m.train()
    assert not any(mod.training for mod in m.frozen_modules())
    m.set_frozen_mode("train").train()
    assert all(mod.training for mod in m.frozen_modules()) and not any(p.requires_grad
                                                                        for p in m.encoder_parameters())


# ----------------------------------------------------------------------------------- perturbations (Figures 3, 4)
def released(name: str, split: str = "test") -> list[dict]:
    path = os.path.join(RELEASED, name, f"{split}.json")
    if not os.path.isfile(path):
        pytest.skip(f"the paper's released manifests are not in {RELEASED}")
    return json.load(open(path))


@pytest.mark.parametrize("kind", ["opposite", "random_word"])
def test_the_released_kvasir_manifest_perturbed_on_size_changes_one_word_of_p6(kind):
    from datasets.perturb import perturb_records, recover_attributes
    records = released("kvasir_polyp")
    new = perturb_records(records, "kvasir", "size", kind, seed=0)
    assert sum(r["perturbation"]["changed"] for r in new) == len(records) == 100
    single = 0
    for old, r in zip(records, new):
        value = recover_attributes(old, "kvasir")[0]["size"]
        a, b = old["prompts"]["p6"].split(), r["prompts"]["p6"].split()
        changed = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        assert r["prompts"]["p1"] == old["prompts"]["p1"] and r["prompts"]["p3"] == old["prompts"]["p3"]
        if " " not in value:                             # a one-word size: exactly that word of P6 changes
            single += 1
            assert len(a) == len(b) and changed == [1] and a[1] == value and b[1] == r["perturbation"]["to"]
            assert r["prompts"]["p4"] == f"{b[1]} {old['prompts']['p3']}"   # the released wording, one word new
    assert single == 98


def test_released_location_and_same_set_keep_the_released_wording():
    from datasets.perturb import dataset_values, perturb_records
    records = released("clinicdb_polyp")
    new = perturb_records(records, "clinicdb", "location", "same_set", seed=1)
    values = dataset_values(records, "clinicdb", "location")
    for old, r in zip(records, new):
        p = r["perturbation"]
        assert p["to"] in values and p["to"] != p["from"]
        assert r["prompts"]["p6"] == old["prompts"]["p5"] + f", located in {p['to']} of the image"
        assert all(t.endswith(f" located in {p['to']} of the image") for t in r["prompts"]["p9"])
        assert r["prompts"]["p8"] == old["prompts"]["p8"]


def test_a_record_off_the_template_is_named_kept_and_counted(tmp_path, capsys):
    import perturb_prompts
    ok = {"img_name": "a.png", "mask_name": "a.png", "prompts": {
        "p0": "", "p1": "polyp", "p2": "round polyp", "p3": "pink round polyp", "p4": "small pink round polyp",
        "p5": "one small pink round polyp", "p6": "one small pink round polyp, located in center of the image"}}
    off = {"img_name": "b.png", "mask_name": "b.png",
           "prompts": {"p0": "", **{f"p{i}": "no polyp" for i in range(1, 10)}}}
    (tmp_path / "bkai").mkdir()
    (tmp_path / "bkai" / "test.json").write_text(json.dumps([ok, off]))
    outs = perturb_prompts.main(perturb_prompts.get_args_parser().parse_args(
        ["--manifest", str(tmp_path / "bkai" / "test.json"), "--out", str(tmp_path / "out"), "--attributes", "size",
         "--kinds", "opposite"]))
    text = capsys.readouterr().out
    assert "1/2 records changed" in text and "1 do not follow the bkai template" in text and "b.png" in text
    assert outs[0]["unmatched"] == [{"img_name": "b.png", "why": "P2 'no polyp' is not '<shape> P1'"}]
    new = json.load(open(outs[0]["path"]))
    assert new[0]["prompts"]["p6"] == "one large pink round polyp, located in center of the image"
    assert new[1]["prompts"] == off["prompts"] and new[1]["perturbation"]["changed"] is False


def test_largest_drops_figure_with_a_tiny_model(small_synthetic, tmp_path):
    from models import create_model
    from vlsm.figures import largest_drops
    data_root, prompts_root = small_synthetic
    model = create_model("clipseg", weights=None, size="tiny", input_size=64)
    png, shown = largest_drops(model, "synthetic", "p3", 0.5, torch.device("cpu"), str(tmp_path / "drops.png"),
                               data_root=data_root, prompts_root=prompts_root, attributes=("colour", "size"), n=2)
    rows = list(csv.DictReader(open(tmp_path / "drops.csv")))
    assert os.path.getsize(png) > 0 and len(shown) == 2 and rows
    assert [float(r["drop"]) for r in rows] == sorted((float(r["drop"]) for r in rows), reverse=True)
    assert all(r["prompt_before"] != r["prompt_after"] for r in rows)


# ----------------------------------------------------------------------------------- Table 5, Table 8, the report
@pytest.fixture()
def tiny_bert(tmp_path):
    """A random BertForMaskedLM with a WordPiece vocabulary of the probe's words, saved as a local folder."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    from datasets.pubmedbert_probe import SENTENCES
    words = sorted({w.strip(".,").lower() for _, s, paper in SENTENCES for w in (s + " " + paper).replace(",", " ")
                    .split() if w.strip(".,") and "[" not in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + words
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    out = tmp_path / "tiny_bert"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def test_pubmedbert_probe_on_a_tiny_bert(tiny_bert, tmp_path, capsys):
    from datasets import pubmedbert_probe as P
    rows = P.main(P.get_args_parser().parse_args(["--weights", tiny_bert, "--out", str(tmp_path / "t5.md")]))
    assert len(rows) == len(P.SENTENCES) == 30
    for r in rows:
        probs = [p for _, p in r["top"]]
        assert len(r["top"]) == 5 and probs == sorted(probs, reverse=True) and all(0 < p <= 1 for p in probs)
    text = capsys.readouterr().out
    assert "| dataset | masked sentence | top predictions | paper (Table 5) |" in text
    assert "| Endoscopy | The location of the polyp is [MASK]. |" in text and "variable, unknown" in text
    assert open(tmp_path / "t5.md").read() == text


def test_pubmedbert_probe_offline_without_weights_names_the_fetch_command(monkeypatch, tmp_path):
    from datasets import pubmedbert_probe as P
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(FileNotFoundError, match="hf download microsoft/BiomedNLP-BiomedBERT-base-uncased"):
        P.load_fill_mask(None)


def test_report_prompts_join_images_metadata_and_reports(tmp_path):
    from datasets import report_prompts as R
    (tmp_path / "img").mkdir()
    for stem in ("d1", "d2", "d3"):
        (tmp_path / "img" / f"{stem}.jpg").write_bytes(b"x")
    (tmp_path / "meta.csv").write_text("dicom_id,subject_id,study_id,ViewPosition\nd1,10000032,50414267,PA\n"
                                       "d2,11000001,52000000,AP\n")
    rep = tmp_path / "files" / "p10" / "p10000032"
    rep.mkdir(parents=True)
    (rep / "s50414267.txt").write_text("  FINAL REPORT\n FINDINGS: Lungs are clear.\n\n IMPRESSION:  No acute\n"
                                       " process.\n")
    argv = ["--images", str(tmp_path / "img"), "--reports", str(tmp_path / "files"), "--metadata",
            str(tmp_path / "meta.csv"), "--out", str(tmp_path / "p.csv")]
    assert R.main(R.get_args_parser().parse_args(argv)) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert rows == [{"image": "d1.jpg", "prompt": "FINAL REPORT FINDINGS: Lungs are clear. IMPRESSION: No acute "
                                                  "process."}]
    assert R.report_prompt((rep / "s50414267.txt").read_text(), "impression") == "No acute process."


def test_scoring_counts_prompts_the_tokenizer_cut(small_synthetic, tmp_path):
    from models import create_model
    from vlsm.scoring import truncated_prompts
    model = create_model("clipseg", weights=None, size="tiny")
    rows = [{"prompt": "polyp"}, {"prompt": " ".join(["word"] * 200)}, {"prompt": " ".join(["word"] * 200)}]
    assert truncated_prompts(model, rows) == {"records": 2, "distinct": 1, "context_length": 77}
    assert truncated_prompts(create_model("unet", weights=None, size="tiny"), rows) == {}


def test_the_report_shows_a_sweep_as_the_search_table_and_plot(tmp_path):
    from vlsm.results import write_report
    for i, (lr, opt, dice) in enumerate([(1e-4, "adam", 0.6), (1e-3, "adam", 0.8), (1e-4, "adamw", 0.7)]):
        d = tmp_path / "cells" / f"c{i}" / "run" / "eval" / "test__kvasir__p6"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({
            "study": "t4", "cell": f"c{i}", "step": "test", "setting": "finetuned", "model": "clipseg", "size": "tiny",
            "train_data": "kvasir", "train_prompt": "p6", "test_data": "kvasir", "preset": "midl", "seed": 0,
            "freeze": "none", "sweep": f"lr={lr:g} optimizer={opt}", "data": "kvasir", "split": "test",
            "prompt": "p6", "n": 10, "dice_mean": dice, "dice_std": 0.1, "iou_mean": dice - 0.1, "threshold": 0.5}))
    written = write_report(str(tmp_path / "cells"), str(tmp_path / "results"))
    md = open(written["markdown"]).read()
    assert "Hyperparameter search (Table 4) — clipseg trained on kvasir" in md and "Table 2 layout" not in md
    assert "| 1 | 0.001 | adam | **80.00 ± 10.00*** |" in md and "| 3 | 0.0001 | adam | 60.00 ± 10.00* |" in md
    assert any(os.path.basename(p).startswith("search_") for p in written["plots"])
    rows = list(csv.DictReader(open(written["csv"])))
    assert sorted(r["sweep"] for r in rows) == ["lr=0.0001 optimizer=adam", "lr=0.0001 optimizer=adamw",
                                                "lr=0.001 optimizer=adam"]
