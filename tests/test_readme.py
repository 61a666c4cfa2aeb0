"""Every command line the README shows runs here, on tiny data, so a documented command cannot break unseen.

The commands are read from the README's ```bash blocks.  Each one must be listed in COMMANDS below (a new
README command without an entry fails the test) with how it runs here:
- "run": in-process, in a workspace laid out as the README assumes (``data/``, ``prompts_json/``, ``runs/``);
  the README's datasets (kvasir, clinicdb, ...) are small synthetic stand-ins, real-weights commands get
  ``--size tiny --weights none`` (and few steps) appended, and placeholders (RUN, <stamp>, /path/to/...) are
  replaced by real files of the workspace;
- "offline": run as written with downloads off; it must stop with one clear error that says how to fetch;
- "skip": with the reason and the test that covers it instead.
"""
import importlib
import json
import os
import re
import shlex
import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA, SHARED_ROOT
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALIASES = ("kvasir", "clinicdb", "bkai", "busi", "cvc300")
TINY_TRAIN = ["--size", "tiny", "--weights", "none", "--epochs", "1", "--max-steps-per-epoch", "1",
              "--batch-size", "4", "--input-size", "64", "--workers", "0"]
WORKERS = ["--workers", "0"]

# README command (exactly as written, comments stripped) -> (how, extra arguments or reason)
COMMANDS = {
    "make demo": ("skip", "train.py + evaluate.py --swap-prompts + python -m vlsm.figures: each runs below"),
    "make test": ("skip", "this test suite"),
    "python train.py": ("run", TINY_TRAIN),
    "python train.py --model clipseg --data kvasir --prompt p3": ("run", TINY_TRAIN),
    "python train.py --model clipseg --data kvasir,clinicdb,bkai --prompt random": ("run", TINY_TRAIN),
    "python train.py --model clipseg --data busi --prompt p3 --freeze-image-encoder": ("run", TINY_TRAIN),
    "python train.py --model clipseg --data kvasir --prompt p3 --preset medvlsm-code": ("run", TINY_TRAIN),
    "python train.py --resume runs/kvasir/clipseg/p3/20261123-101500": ("run", ["--epochs", "2", "--workers", "0"]),
    "for p in p0 p1 p2 p3 p4 p5 p6 p7 p8 p9; do python train.py --model clipseg --data kvasir --prompt $p; done":
        ("run", TINY_TRAIN),
    "torchrun --nproc_per_node 4 train.py --model clipseg --data kvasir --prompt p3":
        ("skip", "tests/test_ddp.py runs train.py under torchrun-style DDP with 2 CPU processes (gloo)"),
    "tensorboard --logdir runs": ("skip", "an external program (installed by requirements.txt)"),
    "python evaluate.py --checkpoint last": ("run", WORKERS),
    "python evaluate.py --checkpoint runs/kvasir/clipseg/p3/<stamp> --data cvc300 --prompt p3": ("run", WORKERS),
    "python evaluate.py --checkpoint RUN --manifest perturbed/test__size__opposite.json --data kvasir":
        ("run", WORKERS),
    "python evaluate.py --checkpoint RUN --swap-prompts": ("run", WORKERS),
    "python evaluate.py --checkpoint RUN --save-masks": ("run", WORKERS),
    "python evaluate.py --checkpoint RUN --threshold auto": ("run", WORKERS),
    "python zeroshot.py --model clipseg --data kvasir --prompts p0,p1,p2,p3": ("offline", "hf download"),
    "python text_report.py --checkpoint last": ("run", WORKERS),
    'python predict.py --checkpoint RUN --images my_scans/ --prompt "round pink polyp"': ("run", []),
    'python predict.py --model clipseg --weights /path/to/clipseg-rd64-refined --images my_scans/ --prompt "polyp"':
        ("run", []),
    "python -m vlsm.figures --checkpoint last": ("run", []),
    "python study.py studies/smoke.toml --dry-run": ("run", []),
    "python study.py studies/smoke.toml": ("skip", "10 minutes of CPU: tests/test_study.py runs, kills and resumes "
                                                   "a small grid through the same code"),
    "python results.py runs/studies/smoke": ("run", []),
    "python -m datasets.prepare kvasir --src /path/to/Kvasir-SEG": ("run", []),
    "python -m datasets.import_manifests --from /path/to/medvlsm/data kvasir": ("run", []),
    "python -m datasets.make_manifest --images raw/images --masks raw/masks --name mydata --class-name polyp":
        ("run", []),
    "python make_prompts.py --data kvasir --stats": ("run", []),
    "python perturb_prompts.py --manifest prompts_json/kvasir/test.json --out prompts_json/kvasir/perturbed":
        ("run", []),
    "python -m models --size tiny": ("run", []),
    "make doctor": ("offline", None),
    "python -m models.cris RUN out.pth": ("run", []),
    "python train.py --peft lora --lora-rank 8": ("run", TINY_TRAIN),
    "python train.py --model clipseg --data kvasir --prompt p3 --peft adapter-dense --adapter-in vision,text,cond":
        ("run", TINY_TRAIN),
    "python train.py --peft coop --train-decoder": ("run", TINY_TRAIN),
    "python -m models --peft adapter-shallow --size tiny": ("run", []),
    "python train.py --train-fraction 0.1": ("run", TINY_TRAIN),
    "python export.py --checkpoint RUN --merge --out merged/": ("skip", "tests/test_peft_runs.py merges a LoRA run "
                                                                         "through export.main and compares logits"),
    "python -m datasets.make_manifest --images scans/ --masks labels/ --name liver --class-name liver --window "
    "ct-abdomen": ("skip", "tests/test_medical.py builds manifests from DICOM and NIfTI files and trains on them"),
    'python predict.py --checkpoint RUN --images dicom_series/ --prompt "liver"':
        ("skip", "tests/test_predict.py predicts pydicom's CT and multi-frame files and checks the DICOM SEG"),
    'python predict.py --checkpoint RUN --images ct.nii.gz --prompt "liver"':
        ("skip", "tests/test_predict.py predicts nibabel's volumes and checks the NIfTI mask's shape and affine"),
    "python export.py --checkpoint RUN --out model.onnx": ("skip", "tests/test_export.py exports a tiny CLIPSeg and "
                                                                   "UNet and checks onnxruntime parity"),
    "make app": ("skip", "serves until Ctrl-C: tests/test_app_browser.py starts app.py and drives it in Chromium"),
    "python bench.py": ("skip", "minutes of CPU: tests/test_cache.py and tests/test_feature_cache.py check what it "
                                "times; its measured output is docs/performance.md"),
}


def readme_commands() -> list[str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def test_every_readme_command_is_covered():
    cmds = readme_commands()
    assert len(cmds) > 20
    missing = [c for c in cmds if c not in COMMANDS]
    assert not missing, f"README commands without an entry in tests/test_readme.py COMMANDS: {missing}"
    stale = [c for c in COMMANDS if c not in cmds]
    assert not stale, f"entries for commands the README no longer shows: {stale}"


# ----------------------------------------------------------------------------- the workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder laid out as the README assumes, with synthetic stand-ins under the README's dataset names."""
    from datasets.synthetic import generate
    ws = tmp_path_factory.mktemp("readme")
    generate(str(ws / "data"), str(ws / "prompts_json"), seed=5, counts={"train": 8, "val": 3, "test": 3})
    for name in ALIASES:
        os.makedirs(ws / "data" / name)
        for sub in ("images", "masks"):
            os.symlink(ws / "data" / "synthetic" / sub, ws / "data" / name / sub)
        shutil.copytree(ws / "prompts_json" / "synthetic", ws / "prompts_json" / name)
    scans = ws / "my_scans"
    scans.mkdir()
    for i, f in enumerate(sorted(os.listdir(ws / "data" / "synthetic" / "images"))[:2]):
        shutil.copy(ws / "data" / "synthetic" / "images" / f, scans / f"scan{i}.png")
    raw = ws / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "masks").mkdir()
    recs = json.load(open(ws / "prompts_json" / "synthetic" / "train.json"))
    seen = set()
    for r in recs:
        if r["img_name"] not in seen:
            seen.add(r["img_name"])
            shutil.copy(ws / "data" / "synthetic" / "images" / r["img_name"], raw / "images" / r["img_name"])
            shutil.copy(ws / "data" / "synthetic" / "masks" / r["mask_name"], raw / "masks" / r["img_name"])
    return ws


def run_command(argv: list[str]):
    """``python X.py ARGS`` or ``python -m MOD ARGS`` in-process: get_args_parser() -> main(args)."""
    if argv[0] == "-m":
        name, rest = argv[1], argv[2:]
        try:
            mod = importlib.import_module(name + ".__main__")
        except ModuleNotFoundError:
            mod = importlib.import_module(name)
    else:
        name, rest = argv[0][:-3], argv[1:]
        mod = importlib.import_module(name)
    return mod.main(mod.get_args_parser().parse_args(rest))


@pytest.fixture(scope="module")
def state(workspace, tmp_path_factory):
    """Runs the README's commands share (made the README's way, with tiny settings)."""
    cwd = os.getcwd()
    os.chdir(workspace)
    try:
        from vlsm.training import default_args, run_training
        tiny = dict(size="tiny", weights="none", epochs=1, max_steps_per_epoch=1, batch_size=4, input_size=64,
                    workers=0)
        run = run_training(default_args(data="kvasir", prompt="p3", **tiny))["run_dir"]
        cris = run_training(default_args(model="cris", data="kvasir", prompt="p3", no_test=True, **tiny))["run_dir"]
        unfinished = run_training(default_args(data="kvasir", prompt="p3", no_test=True, **tiny))["run_dir"]
        os.remove(os.path.join(unfinished, "final.json"))  # as if killed after its first epoch
        run_command(["make_prompts.py", "--data", "kvasir"])
        run_command(["perturb_prompts.py", "--manifest", "prompts_json/kvasir/test.json", "--out", "perturbed"])
        from models import create_model
        create_model("clipseg", size="tiny", input_size=64).hf.save_pretrained(workspace / "clipseg-tiny")
        # the last run decides --checkpoint last
        from util.checkpoint import write_last_run
        write_last_run("runs", run)
    finally:
        os.chdir(cwd)
    return {"RUN": run, "CRIS": cris, "UNFINISHED": unfinished}


def _substitute(cmd: str, ws, st) -> str:
    run = st["RUN"]
    subs = [("runs/kvasir/clipseg/p3/20261123-101500", st["UNFINISHED"]),
            ("runs/kvasir/clipseg/p3/<stamp>", run),
            ("python -m models.cris RUN", f"python -m models.cris {st['CRIS']}"),
            ("/path/to/clipseg-rd64-refined", str(ws / "clipseg-tiny")),
            ("studies/smoke.toml", os.path.join(ROOT, "studies", "smoke.toml")),
            ("results.py runs/studies/smoke", "results.py runs"),
            ("/path/to/Kvasir-SEG", os.path.join(SHARED_DATA, "kvasir_seg")),
            ("/path/to/medvlsm/data", os.path.join(SHARED_ROOT, "reference", "medvlsm_anns")),
            ("out.pth", str(ws / "cris_original.pth"))]
    for a, b in subs:
        cmd = cmd.replace(a, b)
    return re.sub(r"\bRUN\b", run, cmd)


RUNNABLE = [c for c, (how, _) in COMMANDS.items() if how != "skip"]


@pytest.mark.parametrize("cmd", RUNNABLE)
def test_readme_command_runs(cmd, workspace, state, monkeypatch):
    how, extra = COMMANDS[cmd]
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("VLSM_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = _substitute(cmd, workspace, state)
    if "/path/to/" in cmd and ("Kvasir-SEG" in cmd or "medvlsm" in cmd):
        if not os.path.isdir(os.path.join(SHARED_DATA, "kvasir_seg")):
            pytest.skip("../shared/data not available")
        root = workspace / f"prep_{abs(hash(cmd)) % 1000}"
        extra = ["--data-root", str(root / "data"), "--prompts-root", str(root / "pj")]
        if "import_manifests" in cmd:
            extra += ["--images-from", os.path.join(SHARED_DATA, "kvasir_seg")]
    if cmd.startswith("for p in"):
        line = re.search(r"do (.*?);", line).group(1).replace("$p", "p0")
    if cmd == "make doctor":
        doctor = importlib.import_module("models.doctor")
        assert doctor.main(doctor.get_args_parser().parse_args([])) == 0
        return
    argv = shlex.split(line)[1:]
    if how == "offline":
        with pytest.raises(FileNotFoundError, match=extra):
            run_command(argv)
        return
    argv += list(extra)
    result = run_command(argv)
    if argv[0] == "evaluate.py":
        assert 0.0 <= result["dice_mean"] <= 1.0 and result["n"] > 0
    if argv[0] == "predict.py":
        out = result if isinstance(result, str) else result.get("out", result)
        assert any(f.endswith("_mask.png") for f in os.listdir(out))
        mask = Image.open(next(os.path.join(out, f) for f in sorted(os.listdir(out)) if f.endswith("_mask.png")))
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
