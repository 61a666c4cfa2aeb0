"""Export a trained or pretrained model to ONNX and check it against PyTorch in onnxruntime.

    python export.py --checkpoint runs/kvasir/clipseg/p3/<stamp> --out clipseg_kvasir.onnx
    python export.py --checkpoint last --out model.onnx --images scan1.png scan2.dcm --prompt "round pink polyp"
    python export.py --model unet --size tiny --weights none --out unet.onnx

Vision-language models take ``image`` (B, 3, S, S, normalised), ``input_ids`` and ``attention_mask`` (B, L,
int64) and give ``logits``; text-free models (the CNNs) take ``image`` only.  The batch size is dynamic.  After
export the file is run in onnxruntime on real inputs (--images with --prompt, or images and prompts of the
embedded synthetic data) with a batch of another size, and the largest absolute difference of the logits to
PyTorch's is printed; above --tolerance (default 1e-3) the command fails and no file is written.  Tokenization,
resizing, normalisation and the threshold stay in Python: ``<out>.json`` lists them, and docs/medical_files.md
shows how to run the file.
"""
from __future__ import annotations

import argparse
import os

from util.errors import run_cli
from vlsm import cli
from vlsm.export import EXPORTERS, PARITY_TOLERANCE, export_checked, file_examples
from vlsm.loading import load_for_eval


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("export.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[cli.model_options(), cli.output_options("the .onnx file to write")])
    g = p.add_argument_group("export")
    g.add_argument("--images", nargs="+", default=None,
                   help="images for the parity check (any file the toolkit reads: PNG, JPEG, DICOM, ...); default: "
                        "images of the embedded synthetic data")
    g.add_argument("--prompt", default="target", help="the prompt of --images for the parity check (default target)")
    g.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    g.add_argument("--exporter", default="dynamo", choices=EXPORTERS,
                   help="torch.onnx exporter: dynamo (torch.export, the default of torch) or torchscript (the "
                        "older tracer)")
    g.add_argument("--tolerance", type=float, default=PARITY_TOLERANCE,
                   help=f"largest allowed absolute difference of the logits (default {PARITY_TOLERANCE:g})")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    g.add_argument("--merge", action="store_true",
                   help="a LoRA run (--peft lora): fold the low-rank updates into the base weights and write a plain "
                        "model folder to --out (config.json + model.safetensors, loaded like any run folder) "
                        "instead of an ONNX file")
    return p


def merge(args) -> str:
    """--merge: a LoRA run -> a plain model folder (the merged weights; no base weights needed to load it)."""
    from models.peft import merge_lora
    from util.checkpoint import new_dir
    from vlsm.run_card import write_model_folder
    loaded = load_for_eval(args, "cpu")
    out = new_dir(args.out, args.out, "model folders")
    model = merge_lora(loaded.model)
    write_model_folder(out, model, loaded.threshold)
    print(f"merged the LoRA updates of {loaded.run_dir or args.checkpoint} into the base weights: {out} "
          f"(config.json + model.safetensors; evaluate.py/predict.py --checkpoint {out})")
    return out


def main(args) -> dict | str:
    if args.merge:
        if not args.out:
            raise ValueError("give --out DIR: the model folder to write")
        return merge(args)
    if not args.out:
        raise ValueError("give --out FILE.onnx: where to write the exported model")
    if not args.out.endswith(".onnx"):
        raise ValueError(f"--out {args.out}: the file name must end in .onnx")
    if os.path.exists(args.out) and not args.overwrite:
        raise FileExistsError(f"--out {args.out} exists; pass --overwrite to replace it")
    loaded = load_for_eval(args, "cpu")
    examples = file_examples(args.images, args.prompt) if args.images else None
    return export_checked(loaded.model, args.out, examples, opset=args.opset, exporter=args.exporter,
                          tolerance=args.tolerance, threshold=loaded.threshold, source=loaded.describe())


if __name__ == "__main__":
    run_cli(main, get_args_parser())
