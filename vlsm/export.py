"""ONNX export of a segmentation model, checked against PyTorch in onnxruntime.

The exported graph is the model's ``forward`` on normalised images, nothing around it:

- vision-language models: ``image`` float32 (B, 3, S, S), ``input_ids`` int64 (B, L) and ``attention_mask``
  int64 (B, L) -> ``logits`` float32 (B, 1, h, w);
- text-free models (the CNNs): ``image`` -> ``logits`` (B, C, h, w), C = 1 or one channel per class
  (``--multiclass``);

with a dynamic batch size B (S, L, h, w fixed: the model's input size, its tokenizer's length, its output
size).  Resizing to S, normalising with the model's mean/std, tokenizing (``model.tokenize``: the prompt's token
ids, padded to L), upsampling the logits to the image's size, sigmoid and threshold stay outside the graph: the
sidecar ``<file>.json`` lists them (docs/medical_files.md, "Running the exported model").

Parity: the file is run in onnxruntime (CPU) on real inputs, a batch of another size than the one it was traced
with (so the dynamic batch is exercised), and the largest absolute difference of the logits to PyTorch's must
not exceed :data:`PARITY_TOLERANCE`; otherwise :class:`ParityError`, and the file is not kept.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch
from torch import nn

from datasets.io import read_image
from datasets.transforms import SegTransform
from util.io import write_json_atomic

PARITY_TOLERANCE = 1e-3
TRACE_BATCH, CHECK_BATCH = 2, 3
EXPORTERS = ("dynamo", "torchscript")


class ParityError(ValueError):
    """onnxruntime's logits differ from PyTorch's by more than the tolerance."""


class OnnxGraph(nn.Module):
    """The model's forward with named tensor inputs: (image, input_ids, attention_mask) or (image,)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.uses_text = bool(getattr(model, "uses_text", True))

    def forward(self, image, input_ids=None, attention_mask=None):
        if self.uses_text:
            return self.model(image, input_ids=input_ids, attention_mask=attention_mask)
        return self.model(image)


def input_names(model) -> list[str]:
    return ["image", "input_ids", "attention_mask"] if getattr(model, "uses_text", True) else ["image"]


def synthetic_examples(n: int, seed: int = 0) -> list[tuple[np.ndarray, str]]:
    """``n`` images of the embedded synthetic data (each with the P4 prompt of one of its objects): real pixels
    and real prompts when the user gives no images."""
    from datasets.synthetic import make_image, prompts_for
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img, objs, _ = make_image(rng)
        out.append((np.asarray(img.convert("RGB")), prompts_for(objs[0])["p4"]))
    return out


def file_examples(paths: list[str], prompt: str) -> list[tuple[np.ndarray, str]]:
    """Images read as the toolkit reads them (``datasets.io.read_image``: DICOM and volumes too), with ``prompt``."""
    return [(np.asarray(read_image(p)[0]), prompt) for p in paths]


def model_inputs(model, examples: list[tuple[np.ndarray, str]], batch: int) -> dict[str, torch.Tensor]:
    """The graph's inputs for ``batch`` of ``examples`` (repeated cyclically): resized and normalised as the
    loaders do (``SegTransform``), prompts tokenized with ``model.tokenize``."""
    from PIL import Image
    chosen = [examples[i % len(examples)] for i in range(batch)]
    transform = SegTransform(model.input_size, model.image_mean, model.image_std)
    images = torch.stack([transform(Image.fromarray(img), np.zeros(img.shape[:2], bool))[0] for img, _ in chosen])
    inputs = {"image": images}
    if getattr(model, "uses_text", True):
        tokens = model.tokenize([text for _, text in chosen])
        inputs["input_ids"] = tokens["input_ids"].to(torch.int64)
        inputs["attention_mask"] = tokens["attention_mask"].to(torch.int64)
    return inputs


def export_onnx(model, path: str, inputs: dict[str, torch.Tensor], opset: int = 18, exporter: str = "dynamo") -> None:
    """Trace ``model`` (eval mode, CPU) with ``inputs`` and write ``path`` (one file, no external data)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    graph = OnnxGraph(model).eval()
    names = input_names(model)
    args = tuple(inputs[n] for n in names)
    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(graph, args, path, input_names=names, output_names=["logits"], opset_version=opset,
                          dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes={n: {0: batch} for n in names})
    else:
        torch.onnx.export(graph, args, path, input_names=names, output_names=["logits"], opset_version=opset,
                          dynamo=False, dynamic_axes={n: {0: "batch"} for n in names + ["logits"]})


def onnx_parity(model, path: str, inputs: dict[str, torch.Tensor]) -> dict:
    """Run ``path`` in onnxruntime (CPU) and ``model`` in PyTorch on ``inputs``: the largest absolute difference
    of the logits and the shapes."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {n: inputs[n].numpy() for n in input_names(model)}
    onnx_logits = session.run(["logits"], feed)[0]
    with torch.no_grad():
        torch_logits = OnnxGraph(model).eval()(*[inputs[n] for n in input_names(model)]).float().numpy()
    if onnx_logits.shape != torch_logits.shape:
        raise ParityError(f"{path}: onnxruntime gives logits of shape {onnx_logits.shape}, PyTorch "
                          f"{torch_logits.shape}")
    return {"max_abs_diff": float(np.abs(onnx_logits - torch_logits).max()), "batch": int(onnx_logits.shape[0]),
            "logits_shape": list(onnx_logits.shape),
            "logits_range": [float(torch_logits.min()), float(torch_logits.max())],
            "tokens": int(inputs["input_ids"].shape[1]) if "input_ids" in inputs else None}


def export_checked(model, path: str, examples: list[tuple[np.ndarray, str]] | None = None, opset: int = 18,
                   exporter: str = "dynamo", tolerance: float = PARITY_TOLERANCE, threshold: float | None = None,
                   source: dict | None = None, log=print) -> dict:
    """Export ``model`` to ``path``, check parity on ``examples`` (default: synthetic images and prompts) and
    write the sidecar ``<path>.json``; returns the report.  The file appears only when parity holds (written
    beside ``path`` and renamed); :class:`ParityError` otherwise."""
    model = model.to("cpu").eval()
    examples = examples or synthetic_examples(CHECK_BATCH)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        t0 = time.time()
        export_onnx(model, tmp, model_inputs(model, examples, TRACE_BATCH), opset, exporter)
        seconds = time.time() - t0
        import onnx
        onnx.checker.check_model(tmp)
        parity = onnx_parity(model, tmp, model_inputs(model, examples, CHECK_BATCH))
        parity["tolerance"] = tolerance
        log(f"[export] onnxruntime vs PyTorch on {parity['batch']} inputs (traced with {TRACE_BATCH}): max abs diff "
            f"{parity['max_abs_diff']:.3g} (tolerance {tolerance:g}), logits {tuple(parity['logits_shape'])}")
        if not parity["max_abs_diff"] <= tolerance:
            raise ParityError(f"{path}: onnxruntime's logits differ from PyTorch's by up to "
                              f"{parity['max_abs_diff']:.3g} (> {tolerance:g}); the file is not written. Try "
                              f"--exporter {'torchscript' if exporter == 'dynamo' else 'dynamo'} or another --opset")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    report = sidecar(model, path, parity, opset, exporter, threshold, source)
    report["export_seconds"] = round(seconds, 2)
    write_json_atomic(path + ".json", report)
    log(f"[export] wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB) and {path}.json")
    return report


def sidecar(model, path: str, parity: dict, opset: int, exporter: str, threshold, source: dict | None) -> dict:
    """What a program outside Python needs to run the file: inputs, preprocessing, tokenizer, postprocessing."""
    uses_text = bool(getattr(model, "uses_text", True))
    tok = getattr(model, "tokenizer", None)
    return {
        "file": os.path.basename(path), "model": getattr(model, "name", type(model).__name__),
        "source": source or {}, "opset": opset, "exporter": exporter,
        "inputs": {"image": ["batch", 3, model.input_size, model.input_size], **(
            {"input_ids": ["batch", parity.get("tokens")], "attention_mask": ["batch", parity.get("tokens")]}
            if uses_text else {})},
        "outputs": {"logits": ["batch"] + parity["logits_shape"][1:]},
        "preprocess": {"resize": [model.input_size, model.input_size], "resize_mode": "bilinear, antialias, aspect "
                       "ratio not kept", "scale": "uint8 / 255", "mean": list(model.image_mean),
                       "std": list(model.image_std), "channels": "RGB", "layout": "NCHW"},
        "tokenizer": None if not uses_text else {
            "class": type(tok).__name__, "length": parity.get("tokens"),
            "note": "tokenize in Python with the model's tokenizer (model.tokenize), int64 ids and mask"},
        "postprocess": {"upsample": "bilinear to the image's original size", "activation": "sigmoid",
                        "threshold": threshold if threshold is not None else getattr(model, "default_threshold",
                                                                                    0.5)},
        "parity": parity,
    }
