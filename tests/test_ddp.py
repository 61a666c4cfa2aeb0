"""torchrun: two CPU processes (gloo) train like one process with their combined batch, only rank 0 writes, and
an interrupted two-process run resumes exactly (vlsm/distributed.py)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from vlsm.training import default_args, run_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs under torchrun: a straight 2-epoch run, and the same run interrupted in epoch 1 and resumed.
WORKER = r'''
import json, os, sys
sys.path.insert(0, {root!r})
import engine
from util import distributed
from vlsm.training import default_args, run_training

common = json.loads({common!r})
run_training(default_args(out=os.path.join({tmp!r}, "ddp_straight"), **common))
real = engine.train_one_epoch

def cut(*a, **kw):  # every process: two steps of epoch 1, then Ctrl-C
    if a[5] == 1:
        real(*a, **{{**kw, "max_steps": 2}})
        raise KeyboardInterrupt
    return real(*a, **kw)

engine.train_one_epoch = cut
try:
    run_training(default_args(out=os.path.join({tmp!r}, "ddp_cut"), **common))
except SystemExit as e:
    assert e.code == 130, e.code
engine.train_one_epoch = real
distributed.barrier()
run_training(default_args(resume=os.path.join({tmp!r}, "ddp_cut"), workers=0))
print("worker done", distributed.rank(), flush=True, force=True)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(run_dir):
    return [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]


def test_two_processes_train_like_one_and_resume_exactly(small_synthetic, tmp_path):
    data_root, prompts_root = small_synthetic
    common = dict(data_root=data_root, prompts_root=prompts_root, output_dir=str(tmp_path), workers=0, epochs=2,
                  max_steps_per_epoch=4, input_size=64, no_test=True, seed=5, device="cpu")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=ROOT, tmp=str(tmp_path), common=json.dumps({**common, "batch_size": 8})))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLSM_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=280)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("worker done") == 2, out[-2000:]
    assert "x 2 processes" in out
    # one process with the combined batch (2 x 8): the same images per step, so the same training
    single = run_training(default_args(out=str(tmp_path / "single"), batch_size=16, **common))
    ddp, one = _rows(tmp_path / "ddp_straight"), _rows(single["run_dir"])
    assert [r["epoch"] for r in ddp] == [0, 1]  # rank 0 alone wrote the log
    for a, b in zip(one, ddp):
        for k in ("train_loss", "val_loss", "val_dice", "val_iou"):
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-4), (a["epoch"], k, a[k], b[k])
    # interrupted in epoch 1 and resumed under torchrun: the numbers of the straight run
    cut = _rows(tmp_path / "ddp_cut")
    assert [r["epoch"] for r in cut] == [0, 1]
    for a, b in zip(ddp, cut):
        for k in ("train_loss", "val_loss", "val_dice", "lr"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), (a["epoch"], k)
    assert os.path.exists(tmp_path / "ddp_cut" / "interrupted.pth")
