"""ONNX export (export.py, vlsm.export): a tiny CLIPSeg (image + token ids + attention mask) and a tiny UNet
(image) run in onnxruntime within 1e-3 of PyTorch on real inputs, with a batch size other than the traced one.
Each exporter is exercised once (torch.export takes ~10 s for the UNet, ~15 s for CLIPSeg on 2 cores: the
CLIPSeg test uses the TorchScript tracer to stay fast)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from pydicom.data import get_testdata_file  # noqa: E402

import vlsm.export  # noqa: E402
from vlsm.export import ParityError, export_checked, file_examples, model_inputs  # noqa: E402
from vlsm.loading import load_pretrained  # noqa: E402

CLIPSEG = ["--model", "clipseg", "--size", "tiny", "--weights", "none"]


def test_clipseg_cli_dynamic_batch_parity_and_refusals(tmp_path, capsys, monkeypatch):
    """The script on the synthetic images and their prompts; then the file alone, as a user runs it."""
    from export import get_args_parser, main
    out = str(tmp_path / "clipseg.onnx")
    report = main(get_args_parser().parse_args(CLIPSEG + ["--exporter", "torchscript", "--out", out]))
    parity = report["parity"]
    assert parity["max_abs_diff"] <= 1e-3 and parity["batch"] == 3 and parity["logits_shape"][1] == 1
    assert "max abs diff" in capsys.readouterr().out
    side = json.load(open(out + ".json"))
    assert side["inputs"]["input_ids"] == ["batch", 77] and side["exporter"] == "torchscript"
    model = load_pretrained("clipseg", weights="none", size="tiny").model.eval()   # its tokenizer and statistics
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "input_ids", "attention_mask"]
    inputs = model_inputs(model, [(np.full((40, 50, 3), 120, np.uint8), "a red circle")], 1)
    logits = session.run(["logits"], {k: v.numpy() for k, v in inputs.items()})[0]
    assert logits.shape[0] == 1 and np.isfinite(logits).all()
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(get_args_parser().parse_args(CLIPSEG + ["--out", out]))
    real = vlsm.export.onnx_parity   # above the tolerance: an error, and no file left behind
    monkeypatch.setattr(vlsm.export, "onnx_parity", lambda *a: {**real(*a), "max_abs_diff": 0.01})
    refused = str(tmp_path / "refused.onnx")
    with pytest.raises(ParityError, match="not written"):
        main(get_args_parser().parse_args(CLIPSEG + ["--exporter", "torchscript", "--out", refused]))
    assert not os.path.exists(refused) and [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_unet_default_exporter_parity_on_dicom_images(tmp_path):
    """A CNN takes the image only; the parity inputs are read as the toolkit reads them (CT and MR DICOM)."""
    model = load_pretrained("unet", weights="none", size="tiny").model
    examples = file_examples([get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small_RLE.dcm")], "")
    out = str(tmp_path / "unet.onnx")
    report = export_checked(model, out, examples, log=lambda *a: None)
    assert report["exporter"] == "dynamo"
    assert report["parity"]["max_abs_diff"] <= 1e-3 and report["parity"]["batch"] == 3
    assert report["inputs"] == {"image": ["batch", 3, model.input_size, model.input_size]}
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    one = model_inputs(model.eval(), examples, 1)["image"].numpy()
    assert session.run(["logits"], {"image": one})[0].shape[0] == 1
