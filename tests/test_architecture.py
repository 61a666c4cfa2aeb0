"""The shape of the code (import graph) and the behaviours a new user met first: clear one-line errors from
DataLoader workers, no empty run folder after a failed start, the embedded default regenerating itself,
--resume refusing options that would change the experiment, --save-masks."""
import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import evaluate
import train
from datasets import BadSampleError, ManifestDataset, SegTransform, collate
from datasets.synthetic import ensure_synthetic
from util.errors import clear_message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")} - {"engine"}
PACKAGES = ("util", "models", "datasets", "vlsm")


def _modules() -> dict[str, str]:
    """Repository module name -> file (scripts, engine, package modules; not tests)."""
    out = {}
    for name in SCRIPTS | {"engine"}:
        out[name] = os.path.join(ROOT, f"{name}.py")
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                    out[rel.removesuffix(".__init__")] = os.path.join(dirpath, f)
    return out


def _imports(name: str, path: str, known: set) -> set:
    """Repository modules that ``name`` imports (absolute and relative, at any depth in the file)."""
    tree = ast.parse(open(path).read())
    is_pkg = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


@pytest.fixture(scope="module")
def graph():
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_no_module_imports_a_script(graph):
    offenders = {m: sorted(deps & SCRIPTS) for m, deps in graph.items() if deps & SCRIPTS}
    assert not offenders, offenders


def _package(module: str) -> str:
    """The layer a module belongs to: its top package, 'engine', or 'scripts'."""
    top = module.split(".")[0]
    return top if top in PACKAGES or top == "engine" else "scripts"


def test_layers(graph):
    """util imports nothing of ours; models, datasets and engine import only util (imports inside functions
    counted: ``_imports`` walks the whole file)."""
    allowed = {"util": {"util"}, "models": {"models", "util"}, "datasets": {"datasets", "util"}, "engine": {"util"}}
    offenders = {m: sorted(d for d in deps if _package(d) not in allowed[_package(m)])
                 for m, deps in graph.items() if _package(m) in allowed}
    assert not {m: d for m, d in offenders.items() if d}, offenders


def test_no_cycle_between_packages(graph):
    """The package graph (util, models, datasets, engine, vlsm, scripts) is acyclic, imports inside functions
    counted: the layers of docs/architecture.md."""
    edges = {}
    for m, deps in graph.items():
        edges.setdefault(_package(m), set()).update(_package(d) for d in deps if _package(d) != _package(m))
    order = ["util", "models", "datasets", "engine", "vlsm", "scripts"]  # each may import only those before it
    bad = {p: sorted(d for d in ds if order.index(d) >= order.index(p)) for p, ds in edges.items()}
    assert not {p: d for p, d in bad.items() if d}, bad


def test_no_import_cycle_between_modules(graph):
    # a package's __init__ re-exporting its submodules is not a cycle; look at submodule -> submodule edges
    edges = {m: {d for d in deps if d in graph and not (m.startswith(d + ".") and "." not in m[len(d) + 1:])}
             for m, deps in graph.items()}
    state, cycle = {}, []

    def visit(m, stack):
        state[m] = 1
        for d in edges[m]:
            if state.get(d) == 1:
                cycle.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2
    for m in edges:
        if m not in state:
            visit(m, [m])
    assert not cycle, cycle[:3]


# ----------------------------------------------------------------------------- errors


def _broken_dataset(tmp_path):
    data_root, prompts_root = tmp_path / "data", tmp_path / "prompts"
    for d in ("images", "masks"):
        (data_root / "kvasir" / d).mkdir(parents=True)
    (data_root / "kvasir" / "images" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(data_root / "kvasir" / "masks" / "a.png")
    (prompts_root / "kvasir").mkdir(parents=True)
    rec = [{"img_name": "a.jpg", "mask_name": "a.png", "prompts": {"p1": "polyp"}}]
    for split in ("train", "val", "test"):
        (prompts_root / "kvasir" / f"{split}.json").write_text(json.dumps(rec))
    return str(data_root), str(prompts_root)


def test_worker_error_reads_like_the_same_error_without_workers(tmp_path):
    data_root, prompts_root = _broken_dataset(tmp_path)
    ds = ManifestDataset(os.path.join(prompts_root, "kvasir", "train.json"),
                         os.path.join(data_root, "kvasir", "images"), os.path.join(data_root, "kvasir", "masks"),
                         transform=SegTransform(32, (0,) * 3, (1,) * 3))
    with pytest.raises(BadSampleError) as direct:
        ds[0]
    from torch.utils.data import DataLoader
    with pytest.raises(BadSampleError) as in_worker:
        next(iter(DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate)))
    assert "Original Traceback" in str(in_worker.value)
    assert clear_message(in_worker.value) == clear_message(direct.value) == str(direct.value)


def test_a_failed_start_prints_one_line_and_leaves_no_run_folder(tmp_path):
    data_root, prompts_root = _broken_dataset(tmp_path)
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--data", "kvasir", "--size", "tiny",
                           "--weights", "none", "--data-root", data_root, "--prompts-root", prompts_root,
                           "--output-dir", str(out), "--workers", "1", "--input-size", "32", "--epochs", "1"],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "VLSM_DEBUG": ""})
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "a.jpg" in errors[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not [f for _, _, fs in os.walk(out) for f in fs if f != "last_run.txt"], list(os.walk(out))
    assert not (out / "kvasir").exists() or not any((out / "kvasir").rglob("args.json"))


def test_embedded_default_regenerates_missing_images(small_synthetic, tmp_path):
    data_root, prompts_root = str(tmp_path / "data"), str(tmp_path / "prompts")
    from datasets.synthetic import COUNTS, generate
    small = {k: 2 for k in COUNTS}
    generate(data_root, prompts_root, counts=small)
    img_dir = os.path.join(data_root, "synthetic", "images")
    os.remove(os.path.join(img_dir, sorted(os.listdir(img_dir))[0]))
    import datasets.synthetic as syn
    calls = []
    real = syn.generate
    syn.generate = lambda *a, **k: calls.append(a)
    try:
        ensure_synthetic(data_root, prompts_root)
    finally:
        syn.generate = real
    assert calls, "a missing image must trigger regeneration"
    generate(data_root, prompts_root, counts=small)
    calls.clear()
    syn.generate = lambda *a, **k: calls.append(a)
    try:
        ensure_synthetic(data_root, prompts_root)
    finally:
        syn.generate = real
    assert not calls, "a complete dataset is not regenerated"


# ----------------------------------------------------------------------------- options


def test_resume_refuses_options_that_change_the_experiment(tiny_run):
    run = tiny_run["run_dir"]
    os.rename(os.path.join(run, "final.json"), os.path.join(run, "final.json.bak"))
    try:
        with pytest.raises(ValueError, match=r"--lr cannot change.*--epochs"):
            train.main(train.get_args_parser().parse_args(["--resume", run, "--lr", "0.5"]))
    finally:
        os.rename(os.path.join(run, "final.json.bak"), os.path.join(run, "final.json"))


def test_one_vocabulary_for_output_folders():
    import make_prompts
    import perturb_prompts
    import predict
    import zeroshot
    for mod in (train, evaluate, zeroshot, predict):
        opts = {o for a in mod.get_args_parser()._actions for o in a.option_strings}
        assert "--output-dir" in opts, mod.__name__
        assert not opts & {"--run-dir", "--results-dir", "--out-root", "--out-dir", "--batch"}, mod.__name__
    for mod in (make_prompts, perturb_prompts):
        opts = {o for a in mod.get_args_parser()._actions for o in a.option_strings}
        assert not opts & {"--run-dir", "--results-dir", "--out-root", "--out-dir", "--batch"}, mod.__name__


def test_save_masks_writes_one_mask_per_record_at_original_size(tiny_run, tmp_path):
    res = evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", "last", "--output-dir", tiny_run["output_dir"], "--data-root", tiny_run["data_root"],
         "--prompts-root", tiny_run["prompts_root"], "--workers", "0", "--save-masks", "--out",
         str(tmp_path / "masks_eval")]))
    masks = sorted(os.listdir(os.path.join(res["results_dir"], "masks")))
    assert len(masks) == res["n"] > 0
    rec = json.load(open(os.path.join(tiny_run["prompts_root"], "synthetic", "test.json")))[0]
    img = Image.open(os.path.join(tiny_run["data_root"], "synthetic", "images", rec["img_name"]))
    saved = Image.open(os.path.join(res["results_dir"], "masks", os.path.splitext(rec["mask_name"])[0] + ".png"))
    assert saved.size == img.size and set(np.unique(np.asarray(saved))) <= {0, 255}
