"""The weights doctor (``python -m models.doctor``): offline listing, fetch commands that work with the pinned
``hf`` CLI, no network, and the load + checksum check of weights that are present."""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys

import pytest

from models import MODEL_SPECS, doctor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)  # the venv's bin: the pinned packages' commands


@pytest.fixture
def empty_env(tmp_path):
    """Environment with empty caches and downloads off."""
    env = dict(os.environ, VLSM_OFFLINE="1", HF_HUB_OFFLINE="1", HOME=str(tmp_path / "home"),
               HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"), PYTHONPATH=ROOT)
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        env.pop(k, None)
    return env


@pytest.fixture
def no_network(monkeypatch, empty_env):
    for k in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(k, raising=False)
    for k in ("VLSM_OFFLINE", "HF_HUB_OFFLINE", "HOME", "HF_HOME", "TORCH_HOME"):
        monkeypatch.setenv(k, empty_env[k])

    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def split_commands(text: str) -> list[str]:
    return [c.strip() for c in text.split("&&") if c.strip()]


_HELP: dict = {}


def assert_runs_with_pinned_cli(command: str) -> None:
    """The command's program is installed by requirements.txt and accepts every --option it uses."""
    tokens = shlex.split(command)
    prog = os.path.join(BIN, tokens[0])
    assert os.access(prog, os.X_OK), f"`{command}`: {tokens[0]} is not a command of the pinned packages ({BIN})"
    sub = [t for t in tokens[1:2] if not t.startswith("-")]
    key = (tokens[0], *sub)
    if key not in _HELP:
        r = subprocess.run([prog, *sub, "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"`{' '.join(key)} --help` failed: {r.stderr[-500:]}"
        _HELP[key] = r.stdout
    for opt in {t.split("=")[0] for t in tokens if t.startswith("--")}:
        assert re.search(rf"(^|[\s,]){re.escape(opt)}\b", _HELP[key]), f"`{command}`: {opt} unknown to {key}"


def test_doctor_offline_lists_every_weight_missing_with_its_fetch_command(empty_env):
    r = subprocess.run([sys.executable, "-m", "models.doctor"], cwd=ROOT, env=empty_env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "downloads by the models: off" in out and "Summary: 0 of 4 weights present" in out
    sections = re.split(r"\n\n", out)
    for name, spec in MODEL_SPECS.items():
        sec = next(s for s in sections if s.startswith(f"{name}  "))
        assert sec.count("[missing]") == len(doctor.MODEL_NEEDS[name]) and "[present]" not in sec
        for hub_id in doctor.MODEL_NEEDS[name]:
            assert hub_id in sec
        for cmd in split_commands(spec.fetch):  # the record's fetch, printed as is
            assert f"fetch on a connected machine: {cmd}\n" in sec + "\n"
        assert "no reference checksum" in sec
    printed = re.findall(r"fetch on a connected machine: (.+)", out)
    assert len(printed) == sum(len(v) for v in doctor.MODEL_NEEDS.values())
    for cmd in printed:
        assert_runs_with_pinned_cli(cmd)


def test_fetch_commands_of_model_errors_work_with_the_pinned_cli(empty_env):
    """Every command the models' offline errors print (in backticks) runs with the pinned packages."""
    script = ("from models import MODEL_SPECS, create_model\n"
              "for n in [m for m in MODEL_SPECS if m not in ('unetplusplus', 'deeplabv3plus')]:  # unet's loader\n"
              "    try:\n"
              "        create_model(n, weights='auto', size='base')\n"
              "        print('LOADED', n)\n"
              "    except FileNotFoundError as e:\n"
              "        print('ERROR', n, str(e).replace(chr(10), ' '))\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=empty_env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    errors = [line for line in r.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == len(MODEL_SPECS) - 2, r.stdout  # offline, empty caches: every default weight missing
    commands = [c for line in errors for cmd in re.findall(r"`([^`]+)`", line) for c in split_commands(cmd)]
    assert len(commands) == len(errors)  # one command per error
    for spec in MODEL_SPECS.values():
        commands += split_commands(spec.fetch)
    for cmd in commands:
        assert_runs_with_pinned_cli(cmd)


def test_doctor_reads_the_disk_only(no_network, capsys):
    report = doctor.diagnose()
    text = doctor.format_report(report)
    assert not any(f.present for e in report["models"].values() for f in e["weights"])
    assert text.count("[missing]") == sum(len(v) for v in doctor.MODEL_NEEDS.values())
    assert os.environ["HF_HOME"] in report["hf_cache"]


def test_records_agree_with_the_loaders():
    import segmentation_models_pytorch as smp

    from models.cris.checkpoint import OPENAI_RN50_HF_REPO
    from models.hub import download_command
    assert doctor.OPENAI_RN50_HUB_ID == OPENAI_RN50_HF_REPO
    settings = smp.encoders.encoders["resnet50"]["pretrained_settings"]["imagenet"]
    smp_fetch = download_command(settings["repo_id"], "resnet50-imagenet", "model.safetensors",
                                 revision=settings["revision"])
    for name in ("unet", "unetplusplus", "deeplabv3plus"):
        assert MODEL_SPECS[name].fetch == smp_fetch  # the file and revision smp_models looks up
    assert set(doctor.MODEL_NEEDS) == set(MODEL_SPECS)
    for name in MODEL_SPECS:
        for hub_id in doctor.MODEL_NEEDS[name]:
            assert any(hub_id in shlex.split(c) for c in doctor.fetch_commands(name)), (name, hub_id)


def test_present_weights_are_loaded_and_checked(no_network, tmp_path, capsys):
    """A (tiny) CLIPSeg saved where the fetch command puts it: found via --weights DIR, loaded, shape checked;
    no reference -> 'no reference checksum'; a stored reference matches; a wrong one fails with exit 1."""
    from models import create_model
    create_model("clipseg", size="tiny").hf.save_pretrained(tmp_path / "w" / "clipseg-rd64-refined")
    report = doctor.diagnose(["clipseg", "biomedclipseg_d"], weights_dir=str(tmp_path / "w"))
    clip = report["models"]["clipseg"]
    assert clip["weights"][0].present and clip["weights"][0].where == "--weights DIR"
    assert clip["check"]["ok"] is True and "no reference checksum" in clip["check"]["message"]
    fp = clip["check"]["fingerprint"]
    assert fp["shape"][:2] == [1, 1] and fp["abs_sum"] > 0
    bmd = report["models"]["biomedclipseg_d"]  # its CLIPSeg decoder is read from the HF cache only, not DIR
    assert [f.present for f in bmd["weights"]] == [False, False] and bmd["check"]["ok"] is None
    assert "reads it from the Hugging Face cache" in doctor.format_report(report)

    table = json.load(open(doctor.CHECKSUMS))
    table["models"]["clipseg"] = fp
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(table))
    again = doctor.diagnose(["clipseg"], weights_dir=str(tmp_path / "w"), checksums=str(refs))
    assert "checksum matches" in again["models"]["clipseg"]["check"]["message"]
    table["models"]["clipseg"] = dict(fp, sum=fp["sum"] * 1.01 + 1.0)
    refs.write_text(json.dumps(table))
    args = doctor.get_args_parser().parse_args(["--models", "clipseg", "--weights", str(tmp_path / "w"),
                                                "--checksums", str(refs)])
    assert doctor.main(args) == 1
    assert "checksum MISMATCH: sum" in capsys.readouterr().out


def test_tiny_models_match_their_stored_fingerprints():
    refs = json.load(open(doctor.CHECKSUMS))["tiny"]
    for name in ("clipseg", "unet"):
        out = doctor.check_tiny(name, refs)
        assert out["ok"] and "checksum matches" in out["message"], out["message"]
        assert out["fingerprint"]["sum"] == pytest.approx(refs[name]["sum"], rel=1e-3)
        assert out["fingerprint"]["shape"] == refs[name]["shape"]
    assert all(v == {} for v in json.load(open(doctor.CHECKSUMS))["models"].values())  # no weights here
