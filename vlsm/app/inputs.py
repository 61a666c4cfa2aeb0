"""The prompt explorer's files: what an upload is and how it reads, the run's test images, the files to
download.

- :func:`describe_file` / :func:`read_upload`: PNG, JPEG (and the other raster formats of ``datasets.io``), 16-bit
  PNG/TIFF, DICOM and NIfTI/ITK volumes through the shared reader (``datasets.medical``: a window for DICOM,
  volumes and 16-bit images; a slice of a volume, a frame of a multi-frame DICOM).  Every refusal is an
  :class:`~vlsm.app.explorer.AppInputError` with one line naming the file and the fix.
- :func:`run_examples`: the test images of the run's dataset with the prompts of their targets (the run's prompt
  key), so a run opens with something to try; :func:`other_image_prompt` picks another image's prompt for the
  "does it read the text?" comparison.
- :func:`write_downloads`: one PNG mask per prompt (0/255, the original size), a CSV of the table, and for
  medical inputs the masks in their source's geometry (NIfTI on the volume's grid, DICOM SEG referencing the
  source) through ``datasets.medical``'s writers.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from datasets import BadSampleError, load_manifest, read_image
from util.io import write_csv_atomic

from .explorer import TABLE_COLUMNS, AppInputError, as_rgb

RASTER_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
EXAMPLES_LIMIT = 200  # test images listed in the page


@dataclass
class FileKind:
    """What an uploaded file is, for the page to show the right controls."""
    kind: str                 # "raster", "16-bit", "dicom" or "volume"
    count: int = 1            # slices of a volume along the axial axis, frames of a DICOM file
    windowed: bool = False    # the window control applies
    note: str = ""


@dataclass
class LoadedImage:
    """An image ready for the explorer, with where it came from."""
    rgb: np.ndarray                          # uint8 HxWx3 at the original size
    name: str                                # file name shown in the page and used in download names
    path: str = ""
    kind: str = "raster"
    spacing: tuple | None = None             # (row, col) mm
    choices: dict = field(default_factory=dict)  # the reader's choices (slice, axis, frame, window)
    info: dict = field(default_factory=dict)

    @property
    def medical(self) -> bool:
        return self.kind in ("dicom", "volume")


def _medical():
    """``datasets.medical``, or a clear message when its libraries are missing."""
    try:
        from datasets import medical
    except ImportError as e:
        raise AppInputError(f"DICOM/NIfTI files need the medical readers ({e}); install requirements.txt") from None
    return medical


def describe_file(path: str) -> FileKind:
    """The kind of ``path`` and how many 2-D images it holds (volumes: axial slices; DICOM: frames)."""
    if not path or not os.path.isfile(path):
        raise AppInputError(f"no such file: {path!r}")
    name = os.path.basename(path)
    lower = name.lower()
    if lower.endswith(RASTER_EXTS):
        try:
            with Image.open(path) as im:
                deep = im.mode in ("I;16", "I;16B", "I;16L", "I", "F")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise AppInputError(f"cannot read {name}: {_short(e, path, name)}. Upload a PNG, JPEG, DICOM or NIfTI "
                                f"file") from None
        return FileKind("16-bit", windowed=True, note="16-bit grey image: pick an intensity window") if deep \
            else FileKind("raster")
    medical = _medical()
    try:
        if medical.is_volume(path):
            n = medical.count_images(path)
            return FileKind("volume", n, True, f"volume with {n} axial slices: pick a slice and a window")
        if medical.is_dicom(path):
            n = medical.count_images(path)
            return FileKind("dicom", n, True, "DICOM" + (f" with {n} frames: pick a frame and" if n > 1 else ":")
                            + " pick a window (file = the file's own)")
    except ValueError as e:
        raise AppInputError(_short(e, path, name)) from None
    raise AppInputError(f"{name}: not an image this app reads; upload a PNG, JPEG, 16-bit PNG/TIFF, DICOM (.dcm) "
                        f"or NIfTI (.nii, .nii.gz) file")


def read_upload(path: str, slice: int | None = None, window: str | None = None, name: str | None = None
                ) -> LoadedImage:
    """Read an uploaded file.  ``slice``: the slice of a volume (axial) or the frame of a multi-frame DICOM;
    ``window``: a window name of ``datasets.medical`` (``file``, ``auto``, ``ct-abdomen``, ...) or ``L/W``, for
    DICOM, volumes and 16-bit images (None or "" = the reader's default)."""
    kind = describe_file(path)
    name = name or os.path.basename(path)
    window = (window or "").strip() or None
    if kind.kind in ("raster", "16-bit"):
        try:
            pil, _ = read_image(path, window=window if kind.windowed else None)
        except BadSampleError as e:
            raise AppInputError(_short(e, path, name)) from None
        return LoadedImage(as_rgb(pil), name, path, kind.kind)
    index = None if slice is None or slice == "" else int(slice)
    if kind.kind == "volume" and index is None and kind.count > 1:
        raise AppInputError(f"{name} is a 3-D volume with {kind.count} axial slices: choose a slice "
                            f"(0..{kind.count - 1})")
    if kind.kind == "dicom" and index is None and kind.count > 1:
        raise AppInputError(f"{name} is a DICOM file with {kind.count} frames: choose a frame (0..{kind.count - 1})")
    if index is not None and not 0 <= index < kind.count:
        raise AppInputError(f"{name} has {kind.count} {'slices' if kind.kind == 'volume' else 'frames'}; "
                            f"{index} does not exist (0..{kind.count - 1})")
    medical = _medical()
    try:
        if kind.kind == "volume":
            img = medical.read_medical(path, slice=index, axis=2, window=window)
        else:
            img = medical.read_medical(path, frame=index if kind.count > 1 else None, window=window)
    except ValueError as e:
        raise AppInputError(_short(e, path, name)) from None
    return LoadedImage(img.rgb, name, path, kind.kind, img.spacing, dict(img.choices), dict(img.info))


def _short(e: Exception, path: str, name: str) -> str:
    """The reader's one-line message with the upload's temporary folder replaced by the file's name."""
    return str(e).replace(path, name).splitlines()[0]


# ----------------------------------------------------------------------------- the run's test images


@dataclass
class Example:
    """One test image of the run's dataset and the prompts of its targets."""
    label: str
    path: str
    prompts: list
    reader: dict = field(default_factory=dict)


def run_examples(args: dict, data: str | None = None, data_root: str | None = None, prompts_root: str | None = None,
                 prompt: str | None = None, split: str = "test", limit: int = EXAMPLES_LIMIT) -> tuple[list, str]:
    """The test images of the run's dataset (``args``: the run's training options; each given value overrides
    it), one :class:`Example` per image with the texts of its records for the run's prompt key (list prompts:
    the first text; ``random`` = ``p1``).  Returns (examples, a note saying why there are none)."""
    from datasets import parse_names
    from datasets.medical import reader_options
    data = data or args.get("data")
    if not data:
        return [], "no dataset named (a model without a run: pass --data to list test images)"
    data_root = data_root or args.get("data_root") or "data"
    prompts_root = prompts_root or args.get("prompts_root") or "prompts_json"
    key = prompt or args.get("prompt") or "p1"
    key = "p1" if key == "random" else key
    try:
        names = parse_names(data, data_root)
    except ValueError as e:
        return [], str(e)
    out, notes = [], []
    for name in names:
        manifest = os.path.join(prompts_root, name, f"{split}.json")
        if not os.path.isfile(manifest):
            notes.append(f"{manifest} not found")
            continue
        try:
            records = load_manifest(manifest)
        except ValueError as e:
            notes.append(str(e).splitlines()[0])
            continue
        by_image: dict = {}
        for r in records:
            text = r["prompts"].get(key, "")
            text = text if isinstance(text, str) else (text[0] if text else "")
            ex = by_image.setdefault(r["img_name"], Example(
                f"{name}/{r['img_name']}" if len(names) > 1 else r["img_name"],
                os.path.join(data_root, name, "images", r["img_name"]), [], reader_options(r)))
            if text and text not in ex.prompts:
                ex.prompts.append(text)
        out += [ex for ex in by_image.values() if os.path.isfile(ex.path)]
    return out[:limit], "; ".join(notes) if not out else ""


def read_example(ex: Example) -> LoadedImage:
    """A test image of the run, read with its record's reader choices (a slice, a frame, a window: medical
    manifests keep them), with its spacing when the file states one."""
    from datasets.medical import is_medical, is_volume, read_medical
    try:
        if is_medical(ex.path):
            img = read_medical(ex.path, **ex.reader)
            return LoadedImage(img.rgb, os.path.basename(ex.path), ex.path,
                               "volume" if is_volume(ex.path) else "dicom", img.spacing, dict(img.choices),
                               dict(img.info))
        pil, _ = read_image(ex.path, **ex.reader)
    except BadSampleError as e:
        raise AppInputError(str(e).splitlines()[0]) from None
    return LoadedImage(as_rgb(pil), os.path.basename(ex.path), ex.path, "raster", None, dict(ex.reader))


def other_image_prompt(examples: list, current: str | None, typed: list[str]) -> str:
    """A prompt of another test image that is not one of the typed prompts nor a prompt of the current image
    (``text_report.py``'s "prompt of another image"); "" when there is none."""
    own = set(typed)
    for ex in examples:
        if ex.label == current:
            own |= set(ex.prompts)
    for ex in examples:
        if ex.label != current:
            for text in ex.prompts:
                if text not in own:
                    return text
    return ""


# ----------------------------------------------------------------------------- downloads


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe form of a prompt."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
    return (s[:limit].rstrip("-") or "empty")


def stem_of(name: str) -> str:
    lower = name.lower()
    for ext in (".nii.gz",):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def write_downloads(out_dir: str, image: LoadedImage, result: dict, model_name: str = "segmentation model"
                    ) -> list[str]:
    """Write the masks and the table of ``result`` (:meth:`PromptExplorer.segment`) into ``out_dir``: one
    ``<stem>_<i>_<prompt>.png`` per prompt (0/255 at the original size), ``<stem>_masks.csv``, and for a
    NIfTI/ITK slice ``..._mask.nii.gz`` (the slice's mask on the volume's grid, other slices 0), for a DICOM
    file ``..._seg.dcm`` (a DICOM SEG referencing it).  Returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = slug(stem_of(image.name), 60)
    files = []
    for i, (label, mask) in enumerate(zip(result["labels"], result["masks"])):
        base = os.path.join(out_dir, f"{stem}_{i + 1}_{slug(label)}")
        Image.fromarray(mask.astype(np.uint8) * 255).save(base + ".png")
        files.append(base + ".png")
        if image.kind == "volume":
            from datasets.medical import write_nifti_mask
            axis = int(image.choices.get("axis", 2))
            files.append(write_nifti_mask({int(image.choices.get("slice", 0)): mask}, image.path, base + "_mask.nii.gz",
                                          axis=axis, frame=image.choices.get("frame")))
        elif image.kind == "dicom":
            from datasets.medical import write_dicom_seg
            frames = int(image.info.get("frames", 1) or 1)
            arr = mask[None] if frames == 1 else np.zeros((frames, *mask.shape), np.uint8)
            if frames > 1:
                arr[int(image.choices.get("frame", 0))] = mask
            files.append(write_dicom_seg(arr, image.path, base + "_seg.dcm", label=label[:64] or "target",
                                         model_name=model_name))
    rows = [{"image": image.name, **r, "threshold": result["threshold"],
             "spacing_mm": "" if not image.spacing else "x".join(f"{s:g}" for s in image.spacing)}
            for r in result["rows"]]
    csv_path = os.path.join(out_dir, f"{stem}_masks.csv")
    write_csv_atomic(csv_path, rows, ("image",) + TABLE_COLUMNS + ("threshold", "spacing_mm"))
    files.append(csv_path)
    return files
