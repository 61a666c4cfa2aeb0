"""Medical files in and out (datasets.medical, datasets.io, datasets.make_manifest) on files that no one here
wrote: pydicom's bundled test data (CT with rescale, MR little/big endian and RLE, a multi-frame YBR
ultrasound, a truncated file, an SR, an RT plan, a 12-bit JPEG no installed plugin decodes) and nibabel's bundled
volumes.  Files are only copied, cut or given another attribute here, never drawn."""
from __future__ import annotations

import copy
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from nibabel.testing import data_path  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import pixel_array  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from datasets.io import read_image, read_mask  # noqa: E402
from datasets.medical import (  # noqa: E402
    MedicalFileError,
    count_images,
    read_medical,
    read_medical_mask,
    write_dicom_seg,
    write_nifti_mask,
)

NIFTI = os.path.join(str(data_path), "anatomical.nii")   # LAS, big-endian int16, 33 x 41 x 25, 2 mm


def dcm(name: str) -> str:
    return get_testdata_file(name)


def white_fraction(pixels: np.ndarray) -> float:
    return float((pixels == 255).mean())


# ------------------------------------------------------------------------------------------------- DICOM
def test_ct_rescale_to_hounsfield_and_windows_without_saturation():
    img = read_medical(dcm("CT_small.dcm"))
    assert img.pixels.dtype == np.uint8 and img.pixels.shape == (128, 128)
    assert img.spacing == pytest.approx((0.661468, 0.661468))
    window = img.choices["window"]
    # no window in the file: percentiles of the Hounsfield units (stored values are >= 0; air is < 0 HU only
    # after RescaleIntercept -1024)
    assert window["name"] == "auto" and window["percentiles"] == [0.5, 99.5] and window["low"] < -500
    assert white_fraction(img.pixels) < 0.01 and (img.pixels == 0).mean() < 0.01   # not mostly white
    assert img.pixels.min() <= 5 and img.pixels.max() >= 250 and img.pixels.std() > 30
    # a named preset: -150..250 HU, linear in between; the same pixels again from the recorded choices
    abdomen = read_medical(dcm("CT_small.dcm"), window="ct-abdomen")
    assert abdomen.choices["window"] == {"name": "ct-abdomen", "low": -150.0, "high": 250.0}
    ds = pydicom.dcmread(dcm("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expect = np.round(np.clip((hu + 150) / 400, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(abdomen.pixels, expect)
    assert np.array_equal(read_medical(dcm("CT_small.dcm"), **abdomen.choices).pixels, abdomen.pixels)
    level_width = read_medical(dcm("CT_small.dcm"), window="50/400")
    assert np.array_equal(level_width.pixels, abdomen.pixels)
    # the loader's function gives the same pixels, as RGB
    pil, (h, w) = read_image(dcm("CT_small.dcm"), window="ct-abdomen")
    assert (h, w) == (128, 128) and pil.mode == "RGB" and np.array_equal(np.asarray(pil)[..., 0], abdomen.pixels)


def test_mr_little_endian_big_endian_and_rle_give_the_same_pixels():
    little = read_medical(dcm("MR_small.dcm"))
    assert little.choices["window"] == {"name": "file", "center": 600.0, "width": 1600.0, "function": "LINEAR"}
    assert little.spacing == (0.3125, 0.3125)
    for name in ("MR_small_bigendian.dcm", "MR_small_RLE.dcm"):
        other = read_medical(dcm(name))
        assert np.array_equal(other.pixels, little.pixels), name
    assert read_medical(dcm("MR_small_RLE.dcm")).info["transfer_syntax"] == "RLE Lossless"


def test_monochrome1_is_inverted_and_a_voi_lut_table_is_applied(tmp_path):
    ds = pydicom.dcmread(dcm("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "ct_mono1.dcm")
    plain = read_medical(dcm("CT_small.dcm"))
    inverted = read_medical(str(tmp_path / "ct_mono1.dcm"), window=plain.choices["window"])
    assert inverted.info["inverted"] and np.array_equal(inverted.pixels, 255 - plain.pixels)

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    mr = pydicom.dcmread(dcm("MR_small.dcm"))
    del mr.WindowCenter, mr.WindowWidth
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 12]
    lut.LUTData = np.minimum(np.arange(4096) * 2, 4095).astype("<u2").tobytes()
    mr.VOILUTSequence = Sequence([lut])
    mr.save_as(tmp_path / "mr_lut.dcm")
    img = read_medical(str(tmp_path / "mr_lut.dcm"))
    expect = np.round(np.minimum(mr.pixel_array.astype(np.int64) * 2, 4095) * 255 / 4095).astype(np.uint8)
    assert img.choices["window"] == {"name": "file", "lut": 0} and np.array_equal(img.pixels, expect)


def test_multiframe_ybr_ultrasound_one_rgb_image_per_frame():
    path = dcm("examples_ybr_color.dcm")   # US, JPEG baseline, YBR_FULL_422, 30 frames
    assert count_images(path) == 30
    with pytest.raises(MedicalFileError, match="30 frames"):
        read_medical(path)
    frame = read_medical(path, frame=7)
    assert frame.pixels.shape == (240, 320, 3) and frame.choices == {"frame": 7}
    raw = pixel_array(pydicom.dcmread(path), index=7, raw=True)   # Y, Cb, Cr as stored
    grey = (raw[..., 1] == 128) & (raw[..., 2] == 128)
    assert grey.mean() > 0.3   # where there is no colour, RGB has equal channels and R = Y
    p = frame.pixels[grey].astype(int)
    assert np.array_equal(p[:, 0], p[:, 1]) and np.array_equal(p[:, 0], p[:, 2])
    assert np.array_equal(p[:, 0], raw[..., 0][grey])
    assert not np.array_equal(read_medical(path, frame=0).pixels, frame.pixels)
    red = read_medical(dcm("SC_ybr_full_422_uncompressed.dcm")).pixels   # its first rows are red
    assert red[0, 0, 0] > 240 and red[0, 0, 1] < 10 and red[0, 0, 2] < 10


def _cut(src: str, dst, keep: int) -> str:
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[:keep])
    return str(dst)


@pytest.mark.parametrize("case, reason", [
    ("sr", "has no pixel data"), ("rtplan", "has no pixel data"), ("mr_truncated", "pixel data is truncated"),
    ("ct_cut", "pixel data is truncated"), ("rle_cut", "truncated"), ("jpeg12", "no installed decoder"),
    ("not_dicom", "not a DICOM file")])
def test_bad_dicom_is_one_line_naming_the_file(tmp_path, case, reason):
    path = {"sr": lambda: dcm("test-SR.dcm"), "rtplan": lambda: dcm("rtplan.dcm"),
            "mr_truncated": lambda: dcm("MR_truncated.dcm"),
            "ct_cut": lambda: _cut(dcm("CT_small.dcm"), tmp_path / "ct_cut.dcm", 30000),
            "rle_cut": lambda: _cut(dcm("MR_small_RLE.dcm"), tmp_path / "rle_cut.dcm", 5000),
            "jpeg12": lambda: dcm("JPGExtended.dcm"),
            "not_dicom": lambda: _cut(NIFTI, tmp_path / "scan.dcm", 2000)}[case]()
    with pytest.raises(MedicalFileError) as e:
        read_medical(path)
    assert reason in str(e.value) and path in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=reason):   # the loader's function says the same
        read_image(path)


def test_16bit_png_and_tiff_are_rescaled_not_clamped(tmp_path):
    values = pydicom.dcmread(dcm("CT_small.dcm")).pixel_array.astype(np.uint16)   # 128..2191
    Image.fromarray(values).save(tmp_path / "ct16.png")
    Image.fromarray(values).save(tmp_path / "ct16.tif")
    clamped = np.asarray(Image.open(tmp_path / "ct16.png").convert("L"))   # Pillow: values > 255 become 255
    assert white_fraction(clamped) > 0.8
    lo, hi = float(values.min()), float(values.max())
    expect = np.round((values - lo) / (hi - lo) * 255).astype(np.uint8)
    for name in ("ct16.png", "ct16.tif"):
        pil, size = read_image(str(tmp_path / name))
        pixels = np.asarray(pil)[..., 0]
        assert size == (128, 128) and np.array_equal(pixels, expect), name
        assert white_fraction(pixels) < 0.01 and pixels.min() == 0 and pixels.max() == 255
    windowed, _ = read_image(str(tmp_path / "ct16.png"), window="auto")
    assert white_fraction(np.asarray(windowed)) < 0.01


def test_dicom_seg_written_and_referencing_its_sources(tmp_path):
    source = dcm("CT_small.dcm")
    mask = read_medical(source).pixels > 128
    out = write_dicom_seg(mask, [source], str(tmp_path / "seg.dcm"), label="bone", model_name="tiny unet")
    seg = pydicom.dcmread(out)
    src = pydicom.dcmread(source, stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "bone"
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert np.array_equal(seg.pixel_array.astype(bool), mask)
    # a series of three single-frame instances: one SEG, one frame per instance, each referencing its source
    series = []
    for i in range(3):
        ds = copy.deepcopy(pydicom.dcmread(source))
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), i + 1
        ds.ImagePositionPatient = [*map(float, ds.ImagePositionPatient[:2]), float(ds.ImagePositionPatient[2]) + 5 * i]
        ds.save_as(tmp_path / f"slice{i}.dcm")
        series.append(str(tmp_path / f"slice{i}.dcm"))
    masks = np.stack([mask, np.zeros_like(mask), ~mask])
    seg = pydicom.dcmread(write_dicom_seg(masks, series, str(tmp_path / "series_seg.dcm")))
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series]
    frames = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID: k
              for k, f in enumerate(seg.PerFrameFunctionalGroupsSequence)}
    assert seg.NumberOfFrames == 3 and set(frames) == set(uids)
    for uid, m in zip(uids, masks):
        assert np.array_equal(seg.pixel_array[frames[uid]].astype(bool), m)
    with pytest.raises(ValueError, match="no Frame of Reference"):   # highdicom's limit, said in one line
        write_dicom_seg(np.zeros((30, 240, 320), bool), [dcm("examples_ybr_color.dcm")], str(tmp_path / "us.dcm"))


# ------------------------------------------------------------------------------------------------- NIfTI
def test_nifti_slices_line_up_and_the_mask_is_written_on_the_source_grid(tmp_path):
    src = nib.load(NIFTI)
    data = np.asanyarray(src.dataobj)
    assert nib.aff2axcodes(src.affine) == ("L", "A", "S")   # not canonical: the reader flips x to RAS
    threshold = np.percentile(data, 70)
    for axis, shape in ((0, (25, 41)), (1, (25, 33)), (2, (41, 33))):
        n = count_images(NIFTI, axis=axis)
        assert n == data.shape[axis]
        img = read_medical(NIFTI, slice=n // 2, axis=axis)
        assert img.pixels.shape == shape and img.spacing == (2.0, 2.0)
        assert white_fraction(img.pixels) < 0.05 and img.pixels.max() == 255
        slices = [read_medical_mask(NIFTI, slice=k, axis=axis) > threshold for k in range(n)]
        out = write_nifti_mask(np.stack(slices), like=NIFTI, path=str(tmp_path / f"mask{axis}.nii.gz"), axis=axis)
        back = nib.load(out)
        assert back.shape == src.shape and np.allclose(back.affine, src.affine)
        assert np.array_equal(np.asanyarray(back.dataobj), (data > threshold).astype(np.uint8))
    # a dict writes some slices only; a volume in the source's own order is written as it is
    part = write_nifti_mask({3: slices[3]}, like=NIFTI, path=str(tmp_path / "part.nii"), axis=2)
    assert np.asanyarray(nib.load(part).dataobj).sum() == slices[3].sum()
    whole = write_nifti_mask(data > threshold, like=NIFTI, path=str(tmp_path / "whole.nii.gz"), axis=None)
    assert np.array_equal(np.asanyarray(nib.load(whole).dataobj), data > threshold)
    # the same volume through SimpleITK (MetaImage, LPS) gives the same slices
    import SimpleITK as sitk
    sitk.WriteImage(sitk.ReadImage(NIFTI), str(tmp_path / "anat.mha"))
    assert np.array_equal(read_medical(str(tmp_path / "anat.mha"), slice=10).pixels,
                          read_medical(NIFTI, slice=10).pixels)


def test_nifti_refusals(tmp_path):
    four_d = os.path.join(str(data_path), "example4d.nii.gz")
    with pytest.raises(MedicalFileError, match="4-D volume"):
        read_medical(four_d, slice=0)
    assert read_medical(four_d, slice=3, frame=1).choices["frame"] == 1
    with pytest.raises(MedicalFileError, match="read one with slice="):
        read_medical(NIFTI)
    with pytest.raises(MedicalFileError, match="slice 25 does not exist"):
        read_medical(NIFTI, slice=25)
    src = nib.load(NIFTI)
    data = np.asanyarray(src.dataobj)
    shifted = src.affine.copy()
    shifted[0, 3] += 1.0
    nib.save(nib.Nifti1Image((data > 0).astype(np.uint8), shifted), tmp_path / "shifted.nii.gz")
    nib.save(nib.Nifti1Image((data[:, :, :20] > 0).astype(np.uint8), src.affine), tmp_path / "short.nii.gz")
    from datasets.medical import same_grid
    with pytest.raises(MedicalFileError, match="another affine"):
        same_grid(NIFTI, str(tmp_path / "shifted.nii.gz"))
    with pytest.raises(MedicalFileError, match="has shape"):
        same_grid(NIFTI, str(tmp_path / "short.nii.gz"))
    assert read_mask(str(tmp_path / "short.nii.gz"), slice=0).shape == (41, 33)


# ---------------------------------------------------------------------------------------------- manifests
VOLUMES = ("anatomical.nii", "reoriented_anat_moved.nii", "resampled_anat_moved.nii")


@pytest.fixture(scope="module")
def nifti_folder(tmp_path_factory):
    """nibabel's three 3-D volumes with a mask volume each (the brightest 20 % of the voxels)."""
    root = tmp_path_factory.mktemp("nifti_pairs")
    (root / "raw" / "images").mkdir(parents=True)
    (root / "raw" / "masks").mkdir(parents=True)
    for name in VOLUMES:
        src = os.path.join(str(data_path), name)
        shutil.copyfile(src, root / "raw" / "images" / name)
        img = nib.load(src)
        data = np.asanyarray(img.dataobj)
        mask = (np.nan_to_num(data) > np.nanpercentile(data, 80)).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, img.affine), root / "raw" / "masks" / name.replace(".nii", "_mask.nii.gz"))
    return root


def _make(root, name, *extra):
    from datasets.make_manifest import get_args_parser, main
    argv = ["--images", root / "raw" / "images", "--masks", root / "raw" / "masks", "--name", name, "--split",
            "1/1/1", "--data-root", root / "data", "--prompts-root", root / "pj", *extra]
    return main(get_args_parser().parse_args([str(a) for a in argv]))


def _records(root, name) -> list[dict]:
    from datasets.manifest import load_manifest
    return [r for sp in ("train", "val", "test") for r in load_manifest(str(root / "pj" / name / f"{sp}.json"))]


def test_make_manifest_nifti_pairs_one_record_per_slice_that_trains(nifti_folder, tmp_path):
    root = nifti_folder
    report = _make(root, "vols_keep", "--empty-slices", "keep")
    records = _records(root, "vols_keep")
    sizes = {n: nib.load(os.path.join(str(data_path), n)).shape[2] for n in VOLUMES}
    assert report["rejected"] == [] and len(records) == sum(sizes.values()) == 25 + 22 + 3
    for name in VOLUMES:
        mine = [r for r in records if r["img_name"] == name]
        assert sorted(r["reader"]["slice"] for r in mine) == list(range(sizes[name]))
        assert len({r["reader"]["window"]["high"] for r in mine}) == 1   # one window per volume
        assert all(r["reader"]["axis"] == 2 and r["source_format"] == "nifti" for r in mine)
        assert len({json_split for json_split in _splits_of(root, "vols_keep", name)}) == 1   # a volume stays whole
    assert {tuple(r["spacing"]) for r in records if r["img_name"] == "anatomical.nii"} == {(2.0, 2.0)}
    # the default drops the empty slices, and says how many
    dropped = _make(root, "vols", "--overwrite")
    assert dropped["records"] + dropped["empty_slices_left_out"] == len(records) and dropped["empty_slices_left_out"]
    assert all(r["attributes"]["count"] > 0 for r in _records(root, "vols"))
    # the dataset reads each record's slice with its window: the pixels the manifest was made from
    from datasets import build_dataset
    ds = build_dataset("vols", "train", prompt="p1", data_root=str(root / "data"), prompts_root=str(root / "pj"),
                       input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    rec = ds.records[1]
    raw = ds.load(1)
    copied = str(root / "data" / "vols" / "images" / rec["img_name"])
    assert np.array_equal(np.asarray(raw["pil"])[..., 0], read_medical(copied, **rec["reader"]).pixels)
    assert raw["mask"].any() and raw["mask"].shape == raw["orig_size"]
    from datasets.make_manifest import check_dataset
    assert check_dataset("vols", str(root / "data"), str(root / "pj"), log=lambda *a: None)["problems"] == []

    from vlsm.training import default_args, run_training
    with pytest.warns(UserWarning, match="decoded per sample"):
        res = run_training(default_args(data="vols", size="tiny", model="clipseg", epochs=1, max_steps_per_epoch=1,
                                        batch_size=4, input_size=64, workers=0, data_root=str(root / "data"),
                                        prompts_root=str(root / "pj"), output_dir=str(tmp_path / "runs"),
                                        no_test=True))
    assert res["best_epoch"] == 0 and res["nonfinite_steps"] == 0 and 0.0 <= res["best_val_dice"] <= 1.0
    assert res["skipped_samples"] in (0, [], None)


def _splits_of(root, name, img_name):
    import json
    for sp in ("train", "val", "test"):
        path = root / "pj" / name / f"{sp}.json"
        if path.exists() and any(r["img_name"] == img_name for r in json.loads(path.read_text())):
            yield sp


def test_make_manifest_dicom_series_multiframe_and_16bit(tmp_path):
    """Two CT series of two instances each (copies of CT_small under new UIDs), the 30-frame ultrasound with a
    30-page TIFF mask, a 16-bit PNG: records name frames, series stay in one split, windows are recorded."""
    images, masks = tmp_path / "raw" / "images", tmp_path / "raw" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    base = pydicom.dcmread(dcm("CT_small.dcm"))
    mask = read_medical(dcm("CT_small.dcm")).pixels > 128
    for s in range(2):
        series_uid = generate_uid()
        for i in range(2):
            ds = copy.deepcopy(base)
            ds.SeriesInstanceUID, ds.SOPInstanceUID = series_uid, generate_uid()
            ds.save_as(images / f"IM{s}{i}")   # no extension: found by the DICOM preamble
            Image.fromarray((mask * 255).astype(np.uint8)).save(masks / f"IM{s}{i}_mask.png")
    shutil.copyfile(dcm("examples_ybr_color.dcm"), images / "us.dcm")
    pages = [Image.fromarray(((read_medical(dcm("examples_ybr_color.dcm"), frame=k).pixels.max(axis=2) > 60)
                              * 255).astype(np.uint8)) for k in range(30)]
    pages[0].save(masks / "us_mask.tif", save_all=True, append_images=pages[1:])
    Image.fromarray(base.pixel_array.astype(np.uint16)).save(images / "ct16.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(masks / "ct16_mask.png")
    from datasets.make_manifest import get_args_parser, main
    argv = ["--images", images, "--masks", masks, "--name", "dcm", "--split", "1/1", "--data-root",
            tmp_path / "data", "--prompts-root", tmp_path / "pj", "--empty-slices", "keep"]
    report = main(get_args_parser().parse_args([str(a) for a in argv]))
    assert report["rejected"] == [] and report["records"] == 4 + 30 + 1
    records = [r for sp in ("train", "val") for r in _read_json(tmp_path / "pj" / "dcm" / f"{sp}.json")]
    us = [r for r in records if r["img_name"] == "us.dcm"]
    assert sorted(r["reader"]["frame"] for r in us) == list(range(30)) and all(r["spacing"] is None for r in us)
    ct = [r for r in records if r["img_name"].startswith("IM")]
    assert all(r["reader"]["window"]["name"] == "auto" and r["spacing"] == [0.661468, 0.661468] for r in ct)
    split_of = {r["img_name"]: sp for sp in ("train", "val")
                for r in _read_json(tmp_path / "pj" / "dcm" / f"{sp}.json")}
    assert split_of["IM00"] == split_of["IM01"] and split_of["IM10"] == split_of["IM11"]
    png16 = next(r for r in records if r["img_name"] == "ct16.png")
    assert png16["reader"]["window"]["name"] == "range" and png16["source_format"] == "16-bit"
    from datasets.manifest import ManifestDataset
    ds = ManifestDataset(us, str(tmp_path / "data" / "dcm" / "images"), str(tmp_path / "data" / "dcm" / "masks"))
    k = us[5]["reader"]["frame"]
    item = ds.load(5)
    assert np.array_equal(np.asarray(item["pil"]), read_medical(dcm("examples_ybr_color.dcm"), frame=k).pixels)
    assert np.array_equal(item["mask"], np.asarray(pages[k]) > 0)


def _read_json(path):
    import json
    return json.loads(path.read_text()) if path.exists() else []


# ------------------------------------------------------------------------------------- slices as images
def test_slices_of_one_volume_are_different_images_for_targets_and_other_image_prompts(tmp_path):
    """Records naming slices 10 and 11 of anatomical.nii, two classes each (the brightest and the darkest fifth of
    the voxels, mask volumes): --multiclass makes one item per slice with its own masks, a slice is
    multi-target and two slices with their own mask files are not, and the "another image" prompt of a slice
    comes from the other slice."""
    from datasets.manifest import ManifestDataset
    from datasets.medical import image_position
    from datasets.targets import ImageTargetsDataset, image_key, is_multi_target
    from datasets.transforms import SegTransform
    from vlsm.text_report import other_image_records
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    shutil.copyfile(NIFTI, tmp_path / "images" / "anatomical.nii")
    src = nib.load(NIFTI)
    data = np.asanyarray(src.dataobj)
    for cls, mask in (("bright", data > np.percentile(data, 80)), ("dark", data < np.percentile(data, 20))):
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), src.affine), tmp_path / "masks" / f"{cls}.nii.gz")
    records = [{"img_name": "anatomical.nii", "mask_name": f"{cls}.nii.gz", "class_name": cls,
                "reader": {"slice": k, "axis": 2}, "prompts": {"p1": f"{cls} region {k}"}}
               for k in (10, 11) for cls in ("bright", "dark")]
    assert all(image_key(r) == (r["img_name"], image_position(r)) for r in records)
    assert is_multi_target(records)   # a slice with two masks
    per_slice_files = [{**r, "mask_name": f"s{r['reader']['slice']}.png"} for r in records if r["class_name"] == "dark"]
    assert not is_multi_target(per_slice_files)   # one file, two slices, a mask each: one target per image

    base = ManifestDataset(records, str(tmp_path / "images"), str(tmp_path / "masks"), prompt="p1",
                           transform=SegTransform(32, (0.5,) * 3, (0.25,) * 3), class_names=("bright", "dark"))
    per_image = ImageTargetsDataset(base, ("bright", "dark"))
    assert len(per_image) == 2
    items = [per_image[i] for i in range(2)]
    for item, k in zip(items, (10, 11)):
        assert tuple(item["orig_size"].tolist()) == (41, 33) and item["mask"].shape == (2, 32, 32)
        for c, cls in enumerate(("bright", "dark")):
            m = read_mask(str(tmp_path / "masks" / f"{cls}.nii.gz"), slice=k, axis=2)
            assert item["mask"][c].sum() > 0 and abs(float(item["mask"][c].mean()) - m.mean()) < 0.05
    assert not np.array_equal(items[0]["image"].numpy(), items[1]["image"].numpy())   # each its own slice

    swapped = other_image_records(records, "p1")
    assert [r["prompts"]["p1"].endswith("11") for r in swapped] == [True, True, False, False]
