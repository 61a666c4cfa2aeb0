"""Presets say where each number comes from: midl (the MIDL paper), medvlsm-code (the released code), arxiv
(the extended version).  Tiny models, built offline; trainable parameter counts show what each preset trains."""
from __future__ import annotations

import json
import os

import pytest

from models import get_preset
from models.registry import PRESET_KEYS, PRESET_NAMES, preset_table
from vlsm import cli
from vlsm.training import CRIS_BACKBONE_ONLY, build_model, default_args, describe_start, resolve_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def resolved(model, preset, **kw):
    return resolve_args(default_args(model=model, preset=preset, size="tiny", weights="none", data="kvasir", **kw))


def counts(model):
    total = sum(p.numel() for p in model.parameters())
    encoders = sum(p.numel() for p in model.encoder_parameters())
    return total, encoders, model.parameter_counts()["trainable"]


@pytest.mark.parametrize("name", ["clipseg", "biomedclipseg", "biomedclipseg_d"])
def test_medvlsm_code_trains_the_clipseg_family_decoder_only(name):
    code = build_model(resolved(name, "medvlsm-code"))
    total, encoders, trainable = counts(code)
    assert 0 < trainable == total - encoders          # the decoder only: both encoders frozen
    assert not any(p.requires_grad for p in code.encoder_parameters())
    midl = build_model(resolved(name, "midl"))
    assert counts(midl)[2] == total                   # midl / arxiv: end to end


def test_medvlsm_code_trains_cris_end_to_end_and_cnns_with_its_settings():
    a = resolved("cris", "medvlsm-code")
    total, _, trainable = counts(build_model(a))
    assert trainable == total and a.dropout == 0.2 and a.clip_grad == 0.5 and a.early_stop == 20
    u = resolved("unet", "medvlsm-code")
    assert (u.input_size, u.clip_grad, u.scheduler, u.loss, u.optimizer, u.lr) == (256, 0.5, "constant",
                                                                                    "dice-present", "adam", 1e-3)
    assert build_model(u).input_size == 256


def test_midl_and_arxiv_values():
    clip, cris = resolved("clipseg", "midl"), resolved("cris", "midl")
    assert (clip.early_stop, cris.early_stop, clip.epochs, cris.epochs) == (50, 10, 1000, 1000)
    assert (clip.lr, clip.batch_size, cris.lr, cris.batch_size, clip.scheduler) == (2e-3, 128, 2e-5, 32, "plateau")
    ax = resolved("cris", "arxiv")                    # Adam, batch 16, BCE, 1e-6 encoders / 1e-5 decoder, dropout 0.2
    assert (ax.optimizer, ax.batch_size, ax.loss, ax.encoder_lr, ax.lr, ax.dropout, ax.weight_decay, ax.scheduler) \
        == ("adam", 16, "bce", 1e-6, 1e-5, 0.2, 0.0, "constant")
    assert resolved("clipseg", "arxiv").scheduler == "constant" and resolved("clipseg", "arxiv").lr == 1e-3
    for model in ("clipseg", "cris", "biomedclipseg", "biomedclipseg_d", "unet", "unetplusplus", "deeplabv3plus"):
        for p in PRESET_NAMES:
            assert set(PRESET_KEYS) <= set(get_preset(model, p))


def test_explicit_options_win_and_preset_options_default_to_none():
    defaults = vars(cli.train_options().parse_args([]))
    assert all(defaults[k] is None for k in PRESET_KEYS)
    parsed = cli.train_options().parse_args(["--preset", "medvlsm-code", "--model", "clipseg",
                                             "--no-freeze-text-encoder", "--early-stop", "7", "--clip-grad", "0",
                                             "--data", "kvasir", "--size", "tiny", "--weights", "none"])
    a = resolve_args(parsed)
    assert (a.freeze_image_encoder, a.freeze_text_encoder, a.early_stop, a.clip_grad) == (True, False, 7, 0.0)
    assert set(a.preset_overridden) == {"freeze_text_encoder", "early_stop", "clip_grad"}


def test_preset_and_trainable_count_printed_and_stored(small_synthetic, tmp_path, capsys):
    from vlsm.training import start
    data_root, prompts_root = small_synthetic
    run = start(default_args(preset="medvlsm-code", data_root=data_root, prompts_root=prompts_root,
                             output_dir=str(tmp_path), workers=0, batch_size=4, input_size=64, no_cache=True))
    out = capsys.readouterr().out
    saved = json.load(open(os.path.join(run.run_dir, "args.json")))
    assert "preset medvlsm-code" in out and "freeze_image_encoder=True" in out and "trainable parameters:" in out
    assert saved["preset"] == "medvlsm-code" and saved["preset_settings"]["clip_grad"] == 0.5
    assert 0 < saved["parameters"]["trainable"] < saved["parameters"]["total"]
    assert saved["parameters"]["trainable"] == sum(p.numel() for p in run.model.parameters() if p.requires_grad)


def test_cris_without_its_checkpoint_says_so_and_zeroshot_refuses(small_synthetic, tmp_path, monkeypatch):
    a = resolve_args(default_args(model="cris", size="base", weights="none", data="kvasir"))
    assert CRIS_BACKBONE_ONLY in describe_start(a, {"trainable": 1, "total": 1})
    assert "--cris-checkpoint" in CRIS_BACKBONE_ONLY and "RefCOCO" in CRIS_BACKBONE_ONLY
    import zeroshot
    data_root, prompts_root = small_synthetic
    argv = ["--model", "cris", "--size", "tiny", "--weights", "none", "--data", "synthetic", "--data-root",
            data_root, "--prompts-root", prompts_root, "--output-dir", str(tmp_path), "--workers", "0",
            "--prompts", "p1"]
    with pytest.raises(ValueError, match="--cris-checkpoint .*--allow-random-decoder"):
        zeroshot.main(zeroshot.get_args_parser().parse_args(argv))
    scored = []
    monkeypatch.setattr(zeroshot, "score", lambda *a, **kw: scored.append(kw["extra"]) or
                        {"prompt": "p1", "dice_mean": 0.0, "dice_std": 0.0, "iou_mean": 0.0, "n": 0})
    zeroshot.main(zeroshot.get_args_parser().parse_args(argv + ["--allow-random-decoder"]))
    assert scored[0]["random_decoder"] is True


def test_docs_presets_table_is_the_registry_table():
    text = open(os.path.join(ROOT, "docs", "presets.md"), encoding="utf-8").read()
    assert preset_table() in text, "docs/presets.md is out of date: paste models.registry.preset_table()"
