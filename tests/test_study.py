"""study.py / vlsm.study: grid expansion, the step table, done markers (unreadable ones ignored), resume, retry of
failed cells, the CRIS refusal, the submitit executor."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

import study as study_script
import vlsm.scoring
import vlsm.training
from util.io import write_json_atomic
from vlsm import study as S

TRAIN = """
[train]
size = "tiny"
input_size = 64
epochs = {epochs}
max_steps_per_epoch = 1
batch_size = 4
"""


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from datasets.synthetic import generate
    root = tmp_path_factory.mktemp("study_data")
    generate(str(root / "data"), str(root / "pj"), seed=2, counts={"train": 12, "val": 4, "test": 4})
    return str(root / "data"), str(root / "pj")


def write_study(tmp_path, grid: str, epochs: int = 1, extra: str = "") -> str:
    path = tmp_path / "s.toml"
    path.write_text(f'name = "t"\n{extra}\n{TRAIN.format(epochs=epochs)}\n{grid}\n')
    return str(path)


def cli(path, tiny_data, out, *more):
    data_root, prompts_root = tiny_data
    args = study_script.get_args_parser().parse_args(
        [path, "--output-dir", str(out), "--data-root", data_root, "--prompts-root", prompts_root, "--device", "cpu",
         "--no-report", *more])
    return study_script.main(args)


TWO_SEEDS = """
[[grid]]
models = ["clipseg"]
data = ["synthetic"]
prompts = ["p3"]
seeds = [0, 1]
steps = ["train", "test"]
"""


def test_grid_expansion_steps_and_merging(tmp_path):
    path = write_study(tmp_path, """
[zeroshot]
size = "tiny"

[[grid]]
name = "a"
models = ["clipseg", "unet"]
data = ["kvasir", "kvasir,clinicdb"]
prompts = ["p6"]
freeze = ["none", "text"]
steps = ["train", "test", "ood", "cross_prompt", "perturbation", "zeroshot"]
ood = ["etis", "clinicdb"]
cross_prompts = ["p1"]
perturb_attributes = ["size"]
perturb_kinds = ["opposite"]

[[grid]]
name = "b"
models = ["clipseg"]
data = ["kvasir"]
prompts = ["p6"]
steps = ["train", "swap"]
""")
    st = S.load_study(path, output_dir=str(tmp_path / "out"))
    ids = [c.id for c in st.cells]
    # clipseg x 2 data x 2 freeze + unet x 2 data x "none" only (no text encoder) + 2 zero-shot cells (clipseg only)
    assert ids == ["ft__clipseg__kvasir__p6__midl__s0__none", "ft__clipseg__kvasir__p6__midl__s0__text",
                   "ft__clipseg__kvasir+clinicdb__p6__midl__s0__none",
                   "ft__clipseg__kvasir+clinicdb__p6__midl__s0__text",
                   "ft__unet__kvasir__p6__midl__s0__none", "ft__unet__kvasir+clinicdb__p6__midl__s0__none",
                   "zs__clipseg__kvasir", "zs__clipseg__clinicdb", "zs__clipseg__etis"]
    cell = st.cell("ft__clipseg__kvasir__p6__midl__s0__none")
    assert [s.label for s in cell.steps] == [
        "train", "test__kvasir__p6", "ood__etis__p6", "ood__clinicdb__p6", "cross_prompt__kvasir__p1",
        "perturbation__kvasir__p6__size__opposite", "swap__kvasir__p6"]  # grid b's swap step merged into grid a's cell
    assert cell.grids == ["a", "b"]
    pooled = st.cell("ft__clipseg__kvasir+clinicdb__p6__midl__s0__none")
    assert [s.label for s in pooled.steps if s.name in ("test", "ood")] == [
        "test__kvasir__p6", "test__clinicdb__p6", "ood__etis__p6"]
    assert [s.label for s in st.cell("ft__unet__kvasir__p6__midl__s0__none").steps] == [
        "train", "test__kvasir__p6", "ood__etis__p6", "ood__clinicdb__p6"]  # no text steps for a text-free model
    assert [s.label for s in st.cell("zs__clipseg__etis").steps] == ["zeroshot__etis__p6", "zeroshot__etis__p1"]
    assert [c.id for c in S.select(st.cells, ["model=clipseg", "kvasir+clinicdb"])] == [
        "ft__clipseg__kvasir+clinicdb__p6__midl__s0__none", "ft__clipseg__kvasir+clinicdb__p6__midl__s0__text"]
    assert [c.id for c in S.select(st.cells, ["kind=zeroshot", "*etis"])] == ["zs__clipseg__etis"]


@pytest.mark.parametrize("grid, message", [
    ('[[grid]]\nmodels = ["clipseg"]\ndata = ["kvasir"]\nstep = ["train"]\n', "unknown keys"),
    ('[[grid]]\nmodels = ["segformer"]\ndata = ["kvasir"]\n', "unknown grid 'grid0' models"),
    ('[[grid]]\nmodels = ["clipseg"]\ndata = ["kvasirr"]\n', "unknown dataset"),
    ('[[grid]]\nmodels = ["clipseg"]\ndata = ["kvasir"]\nsteps = ["train", "tests"]\n', "steps"),
    ('[[grid]]\nmodels = ["clipseg"]\ndata = ["kvasir"]\n[grid.train]\nmodel = "unet"\n', "may not set"),
    ('[[grid]]\nmodels = ["clipseg"]\ndata = ["kvasir"]\n[grid.train]\nepoch = 3\n', "unknown training options"),
])
def test_bad_study_files_give_clear_errors(tmp_path, grid, message):
    path = tmp_path / "bad.toml"
    path.write_text(grid)
    with pytest.raises(ValueError, match=message):
        S.load_study(str(path))


def test_resume_skips_done_cells_and_retries_a_failed_one(tmp_path, tiny_data, monkeypatch, capsys):
    path = write_study(tmp_path, TWO_SEEDS)
    out = tmp_path / "out"
    calls = {"train": 0, "score": 0}
    real_train, real_score = vlsm.training.run_training, vlsm.scoring.score

    def counting_train(args):
        calls["train"] += 1
        return real_train(args)

    def flaky_score(*a, **kw):
        calls["score"] += 1
        if kw["extra"]["seed"] == 1 and fail["on"]:
            raise RuntimeError("disk full (injected)")
        return real_score(*a, **kw)

    fail = {"on": True}
    monkeypatch.setattr(vlsm.training, "run_training", counting_train)
    monkeypatch.setattr(vlsm.scoring, "score", flaky_score)
    with pytest.raises(SystemExit) as e:
        cli(path, tiny_data, out)
    assert e.value.code == 1 and calls == {"train": 2, "score": 2}
    c0, c1 = (out / "cells" / f"ft__clipseg__synthetic__p3__midl__s{s}__none" for s in (0, 1))
    assert (c0 / "done.json").exists() and not (c1 / "done.json").exists()
    failed = json.loads((c1 / "failed.json").read_text())
    assert failed["attempts"] == 1 and "disk full (injected)" in failed["error"]
    assert (c1 / "run" / "final.json").exists()  # its training finished: only the test step is missing
    assert not (c0 / "running.json").exists() and not (c1 / "running.json").exists()
    assert "FAILED ft__clipseg__synthetic__p3__midl__s1__none: RuntimeError: disk full" in capsys.readouterr().err

    cli(path, tiny_data, out, "--dry-run")
    plan = {line.split()[-1] if "(" not in line else line.split()[2]: line for line in
            capsys.readouterr().out.splitlines()[2:-1]}
    assert plan["ft__clipseg__synthetic__p3__midl__s0__none"].split()[:2] == ["done", "2/2"]
    assert plan["ft__clipseg__synthetic__p3__midl__s1__none"].split()[:2] == ["failed", "1/2"]
    assert "disk full" in plan["ft__clipseg__synthetic__p3__midl__s1__none"]

    fail["on"] = False
    calls.update(train=0, score=0)
    mtime = os.path.getmtime(c0 / "done.json")
    res = cli(path, tiny_data, out)
    assert calls == {"train": 0, "score": 1}  # nothing re-trained; only the failed cell's missing step ran
    assert [r["cell"] for r in res] == ["ft__clipseg__synthetic__p3__midl__s1__none"]
    assert os.path.getmtime(c0 / "done.json") == mtime
    done = json.loads((c1 / "done.json").read_text())
    assert done["attempts"] == 2 and not (c1 / "failed.json").exists()
    summary = json.loads((c1 / "run" / "eval" / "test__synthetic__p3" / "summary.json").read_text())
    assert summary["step"] == "test" and summary["seed"] == 1 and summary["n"] > 0
    assert done["results"]["test__synthetic__p3"]["dice_mean"] == pytest.approx(summary["dice_mean"])

    calls.update(train=0, score=0)
    assert cli(path, tiny_data, out) == [] and calls == {"train": 0, "score": 0}  # all done: nothing runs
    # changing a training option of finished cells is refused instead of mixing results
    path2 = write_study(tmp_path, TWO_SEEDS, epochs=2)
    with pytest.raises(ValueError, match="other options"):
        cli(path2, tiny_data, out)


def test_interrupted_training_resumes_from_its_last_epoch(tmp_path, tiny_data, monkeypatch):
    import engine
    path = write_study(tmp_path, TWO_SEEDS.replace("[0, 1]", "[0]"), epochs=2)
    out = tmp_path / "out"
    real = engine.train_one_epoch
    n = {"epochs": 0}

    def killed_in_second_epoch(*a, **kw):
        n["epochs"] += 1
        if n["epochs"] == 2:
            raise KeyboardInterrupt  # what Ctrl-C / SIGTERM does inside train.py's loop
        return real(*a, **kw)

    monkeypatch.setattr(engine, "train_one_epoch", killed_in_second_epoch)
    with pytest.raises(SystemExit):
        cli(path, tiny_data, out)
    cell = out / "cells" / "ft__clipseg__synthetic__p3__midl__s0__none"
    assert not (cell / "done.json").exists() and not (cell / "failed.json").exists()
    assert not (cell / "run" / "final.json").exists() and not (cell / "running.json").exists()
    st = S.load_study(path, output_dir=str(out))
    assert S.cell_status(st, st.cells[0])["state"] == "todo"
    cli(path, tiny_data, out)
    assert n["epochs"] == 3  # epoch 0 once, epoch 1 twice (interrupted, then resumed); not from scratch
    rows = [json.loads(line) for line in (cell / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert (cell / "done.json").exists() and S.cell_status(st, st.cells[0])["state"] == "done"


def test_submitit_debug_executor_runs_a_two_cell_grid(tmp_path, tiny_data):
    path = write_study(tmp_path, """
[zeroshot]
size = "tiny"
input_size = 64

[[grid]]
models = ["clipseg", "biomedclipseg_d"]
data = ["synthetic"]
prompts = ["p1", "p3"]
steps = ["zeroshot"]
""")
    out = tmp_path / "out"
    res = cli(path, tiny_data, out, "--executor", "submitit-debug")
    assert sorted(r["cell"] for r in res) == ["zs__biomedclipseg_d__synthetic", "zs__clipseg__synthetic"]
    assert all(r["state"] == "done" for r in res)
    for r in res:
        done = json.loads((out / "cells" / r["cell"] / "done.json").read_text())
        assert sorted(done["results"]) == ["zeroshot__synthetic__p1", "zeroshot__synthetic__p3"]
        s = json.loads((out / "cells" / r["cell"] / "eval" / "zeroshot__synthetic__p3" / "summary.json").read_text())
        assert s["setting"] == "zeroshot" and s["prompt"] == "p3" and 0 <= s["dice_mean"] <= 1 and s["n"] > 0
    assert list((out / "submitit").glob("study-*.toml"))  # the jobs read a copy of the study file
    # resubmitting is safe: done cells are not submitted again
    assert cli(path, tiny_data, out, "--executor", "submitit-debug") == []


def test_prepare_hook_converts_and_adds_prompts(tmp_path):
    src = tmp_path / "kvasir_src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        img = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
        mask = Image.new("L", (80, 60), 0)
        ImageDraw.Draw(mask).ellipse([10 + i, 10, 40 + i, 40], fill=255)
        img.save(src / "images" / f"im{i}.jpg")
        mask.save(src / "masks" / f"im{i}.jpg")
    path = write_study(tmp_path, '[[grid]]\nmodels = ["clipseg"]\ndata = ["kvasir"]\n', extra=f"""
[data]
data_root = "{tmp_path / 'data'}"
prompts_root = "{tmp_path / 'pj'}"
[[data.prepare]]
name = "kvasir"
src = "{src}"
""")
    st = S.load_study(path)
    S.prepare_data(st, log=lambda *a: None)
    recs = json.loads((tmp_path / "pj" / "kvasir" / "train.json").read_text())
    assert len(recs) == 8 and (tmp_path / "data" / "kvasir" / "images" / recs[0]["img_name"]).exists()
    r = recs[0]
    assert r["attributes"]["number"] == "one" and r["attributes"]["size"] == ["medium"]
    assert r["prompts"]["p1"] == "polyp" and r["prompts"]["p4"].endswith("polyp") and len(r["prompts"]) == 10
    mtime = os.path.getmtime(tmp_path / "pj" / "kvasir" / "train.json")
    S.prepare_data(st, log=lambda *a: None)  # prepared already: nothing is redone
    assert os.path.getmtime(tmp_path / "pj" / "kvasir" / "train.json") == mtime


def test_a_cut_short_summary_is_ignored_and_its_step_runs_again(tmp_path, tiny_data, capsys):
    """The bug of issue 18: a finished cell whose done.json is gone and whose test summary.json was cut in half
    (a kill during a non-atomic write) must rerun that step, say which file it ignored, and get its row back.
    Also: a step folder of an older study, under the step's former name, counts as done and is read back."""
    from vlsm.results import write_report
    grid = TWO_SEEDS.replace("[0, 1]", "[0]").replace('"test"]', '"test", "cross_prompt"]\ncross_prompts = ["p1"]')
    path = write_study(tmp_path, grid)
    out = tmp_path / "out"
    cli(path, tiny_data, out)
    cell = out / "cells" / "ft__clipseg__synthetic__p3__midl__s0__none"
    summary = cell / "run" / "eval" / "test__synthetic__p3" / "summary.json"
    text = summary.read_text()
    (cell / "done.json").unlink()
    summary.write_text(text[: len(text) // 2])
    old = cell / "run" / "eval" / "xprompt__synthetic__p1"  # as an older version named it
    (cell / "run" / "eval" / "cross_prompt__synthetic__p1").rename(old)
    write_json_atomic(str(old / "summary.json"), {**json.loads((old / "summary.json").read_text()), "step": "xprompt"})
    capsys.readouterr()

    cli(path, tiny_data, out, "--dry-run")
    plan = capsys.readouterr().out
    assert "partial     2/3" in plan and f"ignores {summary} cannot be read as JSON" in plan

    res = cli(path, tiny_data, out)
    log = capsys.readouterr().out
    assert res[0]["state"] == "done"
    assert f"ignoring {summary} cannot be read as JSON" in log and "1 of 3 steps to run" in log
    assert "resuming" not in log and "step test__synthetic__p3" in log  # only the test step ran again
    done = json.loads((cell / "done.json").read_text())
    assert None not in done["results"].values() and done["results"]["test__synthetic__p3"]["n"] > 0
    assert json.loads(summary.read_text())["dice_mean"] == done["results"]["test__synthetic__p3"]["dice_mean"]
    assert not (cell / "run" / "eval" / "cross_prompt__synthetic__p1").exists()
    written = write_report(str(out / "cells"), str(out / "results"), plots=False)
    assert written["unreadable"] == []
    rows = list(csv.DictReader(open(written["csv"])))
    assert sorted((r["cell"], r["step"], r["prompt"]) for r in rows) == [
        ("ft__clipseg__synthetic__p3__midl__s0__none", "cross_prompt", "p1"),
        ("ft__clipseg__synthetic__p3__midl__s0__none", "test", "p3")]


def test_zero_shot_cris_without_its_checkpoint_is_refused_as_in_zeroshot_py(tmp_path, tiny_data, capsys):
    from vlsm.loading import CRIS_NEEDS_CHECKPOINT
    grid = '[zeroshot]\nsize = "tiny"\n{}\n[[grid]]\nmodels = ["cris", "clipseg"]\ndata = ["synthetic"]\n' \
           'prompts = ["p1"]\nsteps = ["zeroshot"]\n'
    path = write_study(tmp_path, grid.format(""))
    out = tmp_path / "out"
    st = S.load_study(path, output_dir=str(out))
    cris = st.cell("zs__cris__synthetic")
    assert CRIS_NEEDS_CHECKPOINT in cris.refused and not st.cell("zs__clipseg__synthetic").refused
    cli(path, tiny_data, out, "--dry-run")
    plan = capsys.readouterr().out
    assert "refused" in plan and "zs__cris__synthetic" in plan and CRIS_NEEDS_CHECKPOINT in plan
    with pytest.raises(ValueError) as e:  # the run refuses to start, naming the cells
        cli(path, tiny_data, out)
    assert str(e.value).startswith("zs__cris__synthetic: " + CRIS_NEEDS_CHECKPOINT)
    assert not (out / "cells" / "zs__cris__synthetic").exists()
    assert S.run_cell(st, cris)["state"] == "refused"  # the library refuses it too ...
    cris.refused = ""  # ... and so does the model loader, should a cell get past both
    res = S.run_cell(st, cris, device="cpu")
    assert res["state"] == "failed" and CRIS_NEEDS_CHECKPOINT[:100] in res["error"]
    assert not list((out / "cells" / "zs__cris__synthetic").rglob("summary.json"))
    capsys.readouterr()
    # explicitly allowed (a random-decoder floor) or given its checkpoint: not refused; a checkpoint that is not
    # there is refused too
    missing = S.load_study(write_study(tmp_path, grid.format('cris_checkpoint = "no/cris_best.pth"')))
    assert "cris_checkpoint no/cris_best.pth does not exist" in missing.cell("zs__cris__synthetic").refused
    (tmp_path / "cris_best.pth").write_bytes(b"")
    for line in ("allow_random_decoder = true", f'cris_checkpoint = "{tmp_path / "cris_best.pth"}"'):
        assert not S.load_study(write_study(tmp_path, grid.format(line))).cell("zs__cris__synthetic").refused
    # the study file now names a CRIS checkpoint: the CLIPSeg cell does not get it (nor a changed config hash)
    assert cli(path, tiny_data, out, "--only", "model=clipseg")[0]["state"] == "done"


@pytest.fixture()
def toy_step():
    """A step added through the step table only: it writes toy.json, which its own reader turns into a row."""
    def run(ctx, step, out):
        write_json_atomic(os.path.join(out, "toy.json"), {"score": 0.25, "prompt": step.prompt})

    def read(path):
        toy = json.load(open(path))
        cell = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(path))))
        return [{"cell": cell, "setting": "zeroshot", "step": "toy", "model": cell.split("__")[1],
                 "test_data": cell.split("__")[2], "prompt": toy["prompt"], "n": 1, "dice_mean": toy["score"]}]

    S.register(S.StepType("toy", "a toy step", "zeroshot", lambda g, c: [S.Step("toy", c.data, "p1")], run,
                          marker="toy.json", result=lambda m: {"score": m["score"]}, read=read))
    yield
    S.unregister("toy")


def test_a_step_added_through_the_step_table_runs_and_reaches_the_report(tmp_path, tiny_data, toy_step):
    from vlsm.results import write_report
    path = write_study(tmp_path, '[[grid]]\nmodels = ["clipseg"]\ndata = ["synthetic"]\nsteps = ["toy"]\n')
    out = tmp_path / "out"
    res = cli(path, tiny_data, out)
    assert res == [{"cell": "zs__clipseg__synthetic", "state": "done", "seconds": res[0]["seconds"]}]
    done = json.loads((out / "cells" / "zs__clipseg__synthetic" / "done.json").read_text())
    assert done["results"] == {"toy__synthetic__p1": {"score": 0.25}}
    written = write_report(str(out / "cells"), str(out / "results"), plots=False)
    rows = list(csv.DictReader(open(written["csv"])))
    assert [(r["step"], r["model"], r["dice_mean"]) for r in rows] == [("toy", "clipseg", "0.250000")]
    assert "| toy | zeroshot | clipseg |" in open(written["markdown"]).read()
    assert cli(path, tiny_data, out) == []  # done: nothing runs again


def test_every_step_has_its_row_in_docs():
    """docs/studies.md's step table lists exactly the steps of the table in vlsm/study/steps.py."""
    doc = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "studies.md")).read()
    table = doc.split("| step | cells |", 1)[1].split("\n\n", 1)[0]
    names = [line.split("`")[1] for line in table.splitlines() if line.startswith("| `")]
    assert names == list(S.STEPS)
