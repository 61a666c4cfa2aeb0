"""Predict masks for your own images (files, folders or globs) with a trained or a pretrained model.

    python predict.py --checkpoint runs/kvasir/clipseg/p3/<stamp> --images my_scans/ --prompt "round pink polyp"
    python predict.py --checkpoint last --images a.png b.jpg --prompt "small red circle"
    python predict.py --model clipseg --weights /path/to/clipseg-rd64-refined --images scans/ --prompt "polyp"
    python predict.py --checkpoint last --images ct_series/ scan.nii.gz --prompt "liver" --window ct-abdomen

Inputs (a folder gives its own files, not its subfolders'): PNG, JPEG, BMP, TIFF (16-bit and float PNG/TIFF
rescaled by --window, never clamped); DICOM files (.dcm, or any name with the DICOM preamble), a multi-frame file
predicted frame by frame, the files of one series (SeriesInstanceUID) kept together; NIfTI, MetaImage and NRRD
volumes, predicted slice by slice along --axis (--frame for 4-D).  Frames and slices are batched like images;
all of them go through the reader of docs/medical_files.md, so a run sees the pixels it was trained on.

Outputs, in the input's geometry (logits upsampled bilinearly to the original size, sigmoid, threshold: the
run's, else the model's, or --threshold):
  plain image   <stem>_mask.png (0/255) and <stem>_overlay.png (the outline on the image; --no-overlay to skip)
  DICOM         the same PNGs at Rows x Columns (<stem>_f<k>_... for frame k of a multi-frame file) and one DICOM
                SEG per series referencing its source instances: <stem>_seg.dcm (one file), <stem>_series_seg.dcm
                (several files; <stem> of the first; an unreadable file is left out of it).  When highdicom
                cannot write it (a multi-frame file without a Frame of Reference or with an unreadable frame)
                the PNGs stay, and the reason is printed and written in the ``notes`` column
  volume        <stem>_mask.nii.gz: uint8 0/1 with the input's shape and affine (of --frame for a 4-D input);
                per-slice PNGs (<stem>_s<k>_...) only with --slice-pngs (default: the volume only)
``predictions.csv`` has a row per 2-D image (image, frame or slice): its output files (mask, overlay, seg,
nifti), size, area in pixels, as a fraction and in mm^2 (area_px x row spacing x column spacing, empty when the
file states no spacing), bounding box (inclusive x1 y1 x2 y2), mean and max probability inside the mask, notes.
Output goes to --out (must not exist), default <run>/predict/<timestamp>/ or, with --weights,
<output-dir>/predict/<model>/<timestamp>/; earlier predictions are never overwritten.  Unreadable files (no pixel
data, truncated, a transfer syntax without a decoder, a 4-D volume without --frame, ...) are skipped and listed
with the reason; when none is readable the command stops with one error.
"""
from __future__ import annotations

import argparse
import glob
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from datasets import BadSampleError, SegTransform, read_image
from datasets.io import HIGH_DEPTH_MODES
from datasets.medical import (
    MEDICAL_EXTS,
    WINDOW_HELP,
    MedicalFileError,
    count_images,
    is_dicom,
    is_volume,
    read_dataset,
    read_medical,
    write_dicom_seg,
    write_nifti_mask,
)
from datasets.medical.dicom import frame_count
from datasets.medical.intensity import check_window
from datasets.medical.volume import check_axis
from util.checkpoint import new_dir
from util.errors import run_cli
from util.io import write_csv_atomic
from util.metrics import mask_statistics, upsample_logits
from util.runtime import forward_batch, pick_device
from vlsm import cli
from vlsm.figures import draw_outline
from vlsm.loading import load_for_eval

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
INPUT_EXTS = IMAGE_EXTS + MEDICAL_EXTS
CSV_COLUMNS = ("image", "frame_or_slice", "mask", "overlay", "seg", "nifti", "width", "height", "area_px",
               "area_fraction", "area_mm2", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "mean_prob_in_mask",
               "max_prob", "prompt", "threshold", "notes")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("predict.py", add_help=add_help, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[cli.runtime_options(8), cli.model_options()])
    g = p.add_argument_group("input and output")
    g.add_argument("--images", nargs="+", required=True,
                   help="image, DICOM or volume files, folders (DICOM series included) or glob patterns")
    g.add_argument("--prompt", default="", help="the text prompt (ignored by text-free models)")
    g.add_argument("--output-dir", default="runs", help="runs root (where train.py wrote last_run.txt)")
    g.add_argument("--out", default=None, help="output folder (must not exist); default <run>/predict/<timestamp>")
    g.add_argument("--no-overlay", action="store_true", help="do not write the outline overlays")
    g = p.add_argument_group("medical files (docs/medical_files.md)")
    g.add_argument("--window", default=None, help=WINDOW_HELP)
    g.add_argument("--axis", type=int, default=None, choices=(0, 1, 2),
                   help="volumes: slice along this axis of the RAS+ volume: 2 axial (default), 1 coronal, 0 sagittal")
    g.add_argument("--frame", type=int, default=None,
                   help="4-D volumes: the frame on the 4th axis (required for them: a 4-D volume without it is "
                        "skipped and named); multi-frame DICOM files are predicted frame by frame")
    g.add_argument("--slice-pngs", action="store_true",
                   help="volumes: also write a mask PNG (and overlay) per slice; default: the NIfTI mask volume only")
    return p


def is_input(path: str) -> bool:
    """What a folder contributes: images and medical files by name, DICOM files under any other name by their
    preamble (series exported as ``IM0001`` or ``1.2.840...``)."""
    name = os.path.basename(path)
    if name.startswith(".") or not os.path.isfile(path):
        return False
    return name.lower().endswith(INPUT_EXTS) or is_dicom(path)


def list_images(specs: list[str]) -> list[str]:
    """The input files of ``--images`` in order, each once."""
    files = []
    for s in specs:
        if os.path.isdir(s):
            files += sorted(os.path.join(s, f) for f in os.listdir(s) if is_input(os.path.join(s, f)))
        elif any(c in s for c in "*?["):
            files += sorted(glob.glob(s))
        else:
            files.append(s)
    if not files:
        raise FileNotFoundError(f"no images found in {specs} (extensions: {', '.join(INPUT_EXTS)}, or DICOM files "
                                f"without extension)")
    return list(dict.fromkeys(files))


@dataclass
class Item:
    """One 2-D image to predict: a plain image file, a frame of a DICOM file or a slice of a volume."""
    path: str
    kind: str                     # "image", "dicom" or "volume"
    position: int | None = None   # the frame of a multi-frame DICOM file or the slice of a volume
    group: str = ""               # the output shared with other items: a DICOM series (one SEG), a volume (one NIfTI)


def expand(files: list[str], axis: int | None = None, frame: int | None = None) -> tuple[list[Item], list[str]]:
    """Files -> the 2-D images they hold, and ``"file: reason"`` for each file that cannot be opened (read from
    the header here; a frame or slice whose pixels cannot be decoded is named when it is read)."""
    items, skipped = [], []
    for path in files:
        try:
            if is_volume(path):
                n = count_images(path, axis=axis, frame=frame)
                items += [Item(path, "volume", k, path) for k in range(n)]
            elif is_dicom(path):
                ds = read_dataset(path, MedicalFileError, pixels=False)
                n = frame_count(ds)
                series = str(ds.get("SeriesInstanceUID") or path)
                items += [Item(path, "dicom", k if n > 1 else None, "series:" + series) for k in range(n)]
            else:
                items.append(Item(path, "image"))
        except MedicalFileError as e:
            skipped.append(named(path, "", str(e)))
    return items, skipped


def named(path: str, where: str, reason: str) -> str:
    """``file[ frame k]: reason``; the reader's own messages name the file already, so a whole file's is kept."""
    return reason if not where and path in reason else f"{path}{where}: {reason}"


def plain_window(path: str, window):
    """``--window`` applies to 16-bit and float images; an 8-bit image is read as it is (None)."""
    if window is None:
        return None
    try:
        with Image.open(path) as img:
            return window if img.mode in HIGH_DEPTH_MODES else None
    except (OSError, ValueError):
        return None  # read_image names the problem


class Inputs(Dataset):
    """Items -> model input, the RGB pixels and the spacing ((row, col) mm or None), or the reason the image
    was skipped."""

    def __init__(self, items: list[Item], transform: SegTransform, window=None, axis: int | None = None,
                 frame: int | None = None):
        self.items, self.transform = items, transform
        self.window, self.axis, self.frame = window, axis, frame

    def __len__(self) -> int:
        return len(self.items)

    def read(self, item: Item) -> tuple[np.ndarray, tuple | None]:
        if item.kind == "volume":
            img = read_medical(item.path, slice=item.position, axis=self.axis, frame=self.frame, window=self.window)
        elif item.kind == "dicom":
            img = read_medical(item.path, frame=item.position, window=self.window)
        else:
            pil, _ = read_image(item.path, window=plain_window(item.path, self.window))
            return np.asarray(pil), None
        return img.rgb, img.spacing

    def __getitem__(self, i: int) -> dict:
        try:
            rgb, spacing = self.read(self.items[i])
        except (BadSampleError, MedicalFileError) as e:
            return {"index": i, "error": str(e)}
        x = self.transform(Image.fromarray(rgb), np.zeros(rgb.shape[:2], bool))[0]
        return {"index": i, "image": x, "rgb": rgb, "spacing": spacing}


def _collate(items: list[dict]) -> dict:
    ok = [it for it in items if "error" not in it]
    batch = {"skipped": [it for it in items if "error" in it], "ok": ok}
    if ok:
        batch["image"] = torch.stack([it["image"] for it in ok])
    return batch


@torch.no_grad()
def predict(model, items: list[Item], prompt: str, threshold: float, device, batch_size: int = 8,
            workers: int = 0, progress: bool = True, window=None, axis: int | None = None, frame: int | None = None):
    """Yield (item, result) for every item, batch by batch (a batch's unreadable items first, then the others in
    order): ``result`` holds ``rgb``, ``prob`` (probabilities at the original size), ``mask`` (bool) and
    ``spacing``, or ``error`` (why the image was skipped)."""
    model.eval()
    ds = Inputs(items, SegTransform(model.input_size, model.image_mean, model.image_std), window, axis, frame)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate)
    with tqdm(total=len(items), unit="img", desc="predict", disable=not progress) as bar:
        for batch in loader:
            for it in batch["skipped"]:
                yield items[it["index"]], {"error": it["error"]}
            if batch["ok"]:
                logits = forward_batch(model, {"image": batch["image"], "text": [prompt] * len(batch["ok"])}, device)
                for it, lg in zip(batch["ok"], logits):
                    prob = torch.sigmoid(upsample_logits(lg, it["rgb"].shape[:2])[0]).cpu().numpy()
                    yield items[it["index"]], {"rgb": it["rgb"], "prob": prob, "mask": prob > threshold,
                                               "spacing": it["spacing"]}
            bar.update(len(batch["ok"]) + len(batch["skipped"]))


def mask_stats(prob: np.ndarray, mask: np.ndarray, spacing: tuple | None = None) -> dict:
    """Area (pixels, fraction, mm^2 where ``spacing`` (row, col) mm is known), inclusive bounding box, mean/max
    probability inside the mask (util.metrics.mask_statistics, rounded for the CSV)."""
    st = mask_statistics(prob, mask, spacing)
    out = {"area_px": st["area_px"], "area_fraction": round(st["area_fraction"], 6),
           "area_mm2": "" if st["area_mm2"] is None else round(st["area_mm2"], 6), "bbox_x1": "", "bbox_y1": "",
           "bbox_x2": "", "bbox_y2": "", "mean_prob_in_mask": "", "max_prob": round(st["max_prob"], 6)}
    if st["area_px"]:
        ys, xs = np.nonzero(mask)
        out.update(bbox_x1=int(xs.min()), bbox_y1=int(ys.min()), bbox_x2=int(xs.max()), bbox_y2=int(ys.max()),
                   mean_prob_in_mask=round(st["mean_prob_in_mask"], 6))
    return out


def file_stem(path: str) -> str:
    """The name without its known extension (``scan.nii.gz`` -> ``scan``); a DICOM file named by its UID keeps
    its whole name."""
    name = os.path.basename(path)
    ext = next((e for e in sorted(INPUT_EXTS, key=len, reverse=True) if name.lower().endswith(e)), "")
    return name[:len(name) - len(ext)] if ext else name


def unique_stem(path: str, taken: set) -> str:
    """``path``'s stem, suffixed -1, -2, ... when another input has it already (a.png and a.jpg, one name in two
    folders); added to ``taken``."""
    stem, k = file_stem(path), 1
    while stem in taken:
        stem, k = f"{file_stem(path)}-{k}", k + 1
    taken.add(stem)
    return stem


@dataclass
class Group:
    """The frames of one DICOM series (written as one SEG) or the slices of one volume (one NIfTI mask),
    gathered until the last of them has been predicted."""
    kind: str                                    # "dicom" or "volume"
    left: int                                    # items still to come
    masks: list = field(default_factory=list)    # (path, position, mask) of the readable items, in the order met
    rows: list = field(default_factory=list)     # (path, CSV row) of the readable items
    bad: dict = field(default_factory=dict)      # path -> how many of its frames or slices could not be read


def write_group(g: Group, out: str, stems: dict, args, label: str, model_name: str) -> None:
    """Write a finished group's SEG or NIfTI mask and fill its rows' ``seg``/``nifti`` column, or print why there
    is none and put that in their ``notes``: the PNG masks stand either way.  A SEG covers the readable files of
    its series (a file with an unreadable frame is left out of it); a NIfTI mask needs every slice."""
    keep = [(path, pos, m) for path, pos, m in g.masks if path not in g.bad]
    sources = list(dict.fromkeys(path for path, _, _ in keep))
    first = sources[0] if sources else g.masks[0][0]
    if g.kind == "volume":
        column, name, what = "nifti", f"{stems[first]}_mask.nii.gz", "NIfTI mask"
    else:
        column, what = "seg", "DICOM SEG"
        name = f"{stems[first]}_seg.dcm" if len(sources) <= 1 else f"{stems[first]}_series_seg.dcm"
    if not keep:
        reason = ""
    elif g.kind == "volume":
        reason = _try(lambda: write_nifti_mask({pos: m for _, pos, m in keep}, like=first,
                                               path=os.path.join(out, name), axis=check_axis(args.axis),
                                               frame=args.frame))
    else:
        reason = _try(lambda: write_dicom_seg(np.stack([m for _, _, m in keep]), sources, os.path.join(out, name),
                                              label=label, model_name=model_name))
    for path, row in g.rows:
        if path in g.bad:
            row["notes"] = f"no {what}: {g.bad[path]} of its {'slices' if g.kind == 'volume' else 'frames'} " \
                           f"could not be read"
        elif reason:
            row["notes"] = f"no {what}: {reason}"
        else:
            row[column] = name
            if g.bad:
                row["notes"] = f"the {what} leaves out {len(g.bad)} unreadable file(s) of the series"
    for path, n in g.bad.items():
        if any(p == path for p, _ in g.rows):   # partly read (wholly unreadable files are listed as skipped)
            print(f"no {what} for {path}: {n} of its frames or slices could not be read")
    if reason:
        series = f" (a series of {len(sources)} files)" if len(sources) > 1 else ""
        kept = " (its PNG masks are written)" if g.kind == "dicom" else ""
        print(f"no {what} for {first}{series}{kept}: {reason}")


def _try(write) -> str:
    """Run a writer; '' when it worked, else the reason in one line.  A SEG or NIfTI file is an extra output: what
    highdicom or nibabel object to (a source without Frame of Reference, mixed sizes in a series, ...) is
    reported, not raised."""
    try:
        write()
    except Exception as e:  # any writer failure becomes a note, never a traceback
        text = " ".join(str(e).split())
        return text if isinstance(e, ValueError) else f"{type(e).__name__}: {text}"
    return ""


def main(args) -> str:
    try:
        check_window(args.window)
    except ValueError as e:
        raise ValueError(f"--window: {e}") from None
    files = list_images(args.images)
    items, skipped = expand(files, args.axis, args.frame)  # before the model: a wrong input fails in a second
    if not items:
        raise ValueError(f"nothing to predict: none of the {len(files)} input file(s) can be read: "
                         + "; ".join(skipped))
    device = pick_device(args.device)
    cli.fixed_threshold(args.threshold, "predict.py")
    loaded = load_for_eval(args, device)
    model, threshold, run_dir = loaded.model, loaded.threshold, loaded.run_dir
    model_name = str(loaded.args.get("model") or args.model or "segmentation model")
    label = (args.prompt.strip() or "target")[:64]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    default = (os.path.join(run_dir, "predict", stamp) if run_dir
               else os.path.join(args.output_dir, "predict", args.model, stamp))
    out = new_dir(args.out, default, "predictions")
    groups: dict[str, Group] = {}
    for it in items:
        if it.group:
            groups.setdefault(it.group, Group(it.kind, 0)).left += 1
    stems: dict[str, str] = {}  # path -> a stem no other input has
    taken: set[str] = set()
    rows = []
    for item, res in predict(model, items, args.prompt, threshold, device, args.batch_size, args.workers,
                             window=args.window, axis=args.axis, frame=args.frame):
        if item.path not in stems:
            stems[item.path] = unique_stem(item.path, taken)
        g = groups.get(item.group)
        if "error" in res:
            where = "" if item.position is None else f" {'slice' if item.kind == 'volume' else 'frame'} " \
                                                      f"{item.position}"
            skipped.append(named(item.path, where, res["error"]))
            if g is not None:
                g.bad[item.path] = g.bad.get(item.path, 0) + 1
        else:
            row = write_image(item, res, out, stems[item.path], args)
            row.update(prompt=args.prompt, threshold=threshold)
            rows.append(row)
            if g is not None:
                g.masks.append((item.path, item.position, res["mask"]))
                g.rows.append((item.path, row))
        if g is not None:
            g.left -= 1
            if g.left == 0 and g.masks:
                write_group(g, out, stems, args, label, model_name)
                g.masks = []  # written: free the memory of a large volume or series
    for s in skipped:
        print(f"skipped: {s}")
    if not rows:
        os.rmdir(out)
        raise ValueError(f"nothing to predict: none of the {len(items)} image(s) in {len(files)} input file(s) "
                         f"can be read: " + "; ".join(skipped))
    write_csv_atomic(os.path.join(out, "predictions.csv"), rows, CSV_COLUMNS)
    print(f"wrote {len(rows)} predictions for prompt {args.prompt!r} (threshold {threshold}) and predictions.csv to "
          f"{out}" + (f"; skipped {len(skipped)}" if skipped else ""))
    return out


def write_image(item: Item, res: dict, out: str, stem: str, args) -> dict:
    """The PNG mask (and overlay) of one 2-D image, unless it is a volume slice without --slice-pngs; its CSV row."""
    rgb, prob, mask = res["rgb"], res["prob"], res["mask"]
    if item.kind == "volume":
        stem = f"{stem}_s{item.position:03d}"
    elif item.position is not None:  # a frame of a multi-frame DICOM file
        stem = f"{stem}_f{item.position:03d}"
    mask_file = overlay_file = ""
    if item.kind != "volume" or args.slice_pngs:
        mask_file = f"{stem}_mask.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(out, mask_file))
        if not args.no_overlay:
            overlay_file = f"{stem}_overlay.png"
            Image.fromarray(draw_outline(rgb, mask)).save(os.path.join(out, overlay_file))
    return {"image": item.path, "frame_or_slice": "" if item.position is None else item.position, "mask": mask_file,
            "overlay": overlay_file, "seg": "", "nifti": "", "width": rgb.shape[1], "height": rgb.shape[0],
            **mask_stats(prob, mask, res["spacing"]), "notes": ""}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
