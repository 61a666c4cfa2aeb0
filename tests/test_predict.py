"""predict.py (masks, outline overlays, the per-image CSV; a run folder or --model/--weights) and vlsm.figures."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

import predict
from datasets.medical import read_medical, read_medical_mask
from vlsm import figures
from vlsm.training import default_args, run_training


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("pred_imgs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 255, (33, 20), dtype=np.uint8)).save(d / "b.jpg")  # grayscale JPEG
    (d / "notes.txt").write_text("not an image")
    return d


def run_predict(*argv):
    return predict.main(predict.get_args_parser().parse_args([*argv, "--workers", "0"]))


def read_rows(out):
    with open(os.path.join(out, "predictions.csv")) as f:
        return {os.path.basename(r["image"]): r for r in csv.DictReader(f)}


def test_outline_is_drawn_on_the_border_with_a_dark_halo():
    img = np.zeros((40, 40, 3), np.uint8)
    img[...] = (200, 30, 30)  # a red object: a red tint would vanish on it
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    out = figures.draw_outline(img, mask, width=1)
    assert (out[10, 10:30] == (0, 255, 0)).all() and (out[29, 10:30] == (0, 255, 0)).all()
    assert (out[15:25, 15:25] == (200, 30, 30)).all()     # inside untouched
    assert (out[9, 12] == (0, 0, 0)).all()                # halo just outside the outline
    assert (out[0, 0] == (200, 30, 30)).all()
    assert (figures.draw_outline(img, np.zeros((40, 40), bool)) == img).all()


def test_predict_with_weights_writes_masks_overlays_and_csv(images, tmp_path):
    out = run_predict("--model", "clipseg", "--size", "tiny", "--weights", "none", "--images", str(images),
                      "--prompt", "red circle", "--out", str(tmp_path / "p"), "--batch-size", "1")
    rows = read_rows(out)
    assert sorted(rows) == ["a.png", "b.jpg"]
    for name, (w, h) in (("a", (70, 50)), ("b", (20, 33))):
        mask = np.asarray(Image.open(os.path.join(out, f"{name}_mask.png")))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        assert Image.open(os.path.join(out, f"{name}_overlay.png")).size == (w, h)
        r = rows[f"{name}.{'png' if name == 'a' else 'jpg'}"]
        fg = mask > 0
        assert (int(r["width"]), int(r["height"])) == (w, h) and int(r["area_px"]) == fg.sum()
        assert r["area_mm2"] == r["frame_or_slice"] == r["seg"] == r["nifti"] == ""   # no spacing, one image
        assert float(r["area_fraction"]) == pytest.approx(fg.sum() / (w * h), abs=1e-6)
        if fg.any():
            ys, xs = np.nonzero(fg)
            assert [int(r[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")] == [xs.min(), ys.min(),
                                                                                        xs.max(), ys.max()]
            assert 0.5 < float(r["mean_prob_in_mask"]) <= float(r["max_prob"]) <= 1.0
        else:
            assert r["bbox_x1"] == "" and r["mean_prob_in_mask"] == ""
    # threshold 0: every pixel is foreground, the box is the whole image
    full = read_rows(run_predict("--model", "clipseg", "--size", "tiny", "--weights", "none", "--images",
                                 str(images / "a.png"), "--threshold", "0", "--out", str(tmp_path / "full"),
                                 "--no-overlay"))["a.png"]
    assert (int(full["area_px"]), float(full["area_fraction"])) == (3500, 1.0)
    assert [full[k] for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")] == ["0", "0", "69", "49"]
    assert not os.path.exists(tmp_path / "full" / "a_overlay.png")


def test_predict_from_a_run_folder_and_the_showcase(small_run, images, tmp_path, capsys):
    run, data_root, prompts_root = small_run
    out = run_predict("--checkpoint", run, "--images", str(images / "*.png"), str(images / "b.jpg"),
                      "--prompt", "red round circle", "--out", str(tmp_path / "pred"))
    assert sorted(read_rows(out)) == ["a.png", "b.jpg"]
    assert Image.open(os.path.join(out, "b_mask.png")).size == (20, 33)
    with pytest.raises(FileExistsError, match="never overwritten"):
        run_predict("--checkpoint", run, "--images", str(images), "--out", out)
    with pytest.raises(ValueError, match="--checkpoint RUN"):
        run_predict("--images", str(images))
    png = figures.main(figures.get_args_parser().parse_args(["--checkpoint", run, "--n", "2", "--device", "cpu"]))
    assert png == os.path.join(run, "showcase.png") and capsys.readouterr().out.strip().endswith("showcase.png")
    img = Image.open(png)
    assert img.format == "PNG" and img.size[0] > img.size[1] > 200  # 2 rows x 4 panels


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    from datasets.synthetic import generate
    root = tmp_path_factory.mktemp("pred_run")
    generate(str(root / "data"), str(root / "pj"), seed=4, counts={"train": 8, "val": 4, "test": 4})
    run = run_training(default_args(model="clipseg", size="tiny", input_size=64, data="synthetic", prompt="p3",
                                    epochs=1, max_steps_per_epoch=1, batch_size=4, workers=0, no_test=True,
                                    data_root=str(root / "data"), prompts_root=str(root / "pj"),
                                    output_dir=str(root / "runs"), out=str(root / "runs" / "r")))["run_dir"]
    return run, str(root / "data"), str(root / "pj")


# ------------------------------------------------------------------------------ medical files (docs/medical_files.md)
@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A folder of files no one here drew: pydicom's CT_small (and a truncated copy without extension, an SR
    without pixels), a 3-frame enhanced CT that highdicom converts from three copies of CT_small, a 2-frame RGB
    secondary capture without Frame of Reference, CT_small's values as a 16-bit PNG, nibabel's anatomical.nii
    (3-D) and example4d.nii.gz (4-D)."""
    import copy
    import shutil

    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    from nibabel.testing import data_path
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    d = tmp_path_factory.mktemp("scans")
    ct = get_testdata_file("CT_small.dcm")
    shutil.copyfile(ct, d / "ct.dcm")
    (d / "IMCUT").write_bytes(open(ct, "rb").read()[:30000])   # preamble kept, pixel data cut
    shutil.copyfile(get_testdata_file("test-SR.dcm"), d / "sr.dcm")
    shutil.copyfile(get_testdata_file("SC_rgb_rle_2frame.dcm"), d / "sc2.dcm")
    series = []
    for i in range(3):
        ds = copy.deepcopy(pydicom.dcmread(ct))
        ds.SOPInstanceUID, ds.InstanceNumber = generate_uid(), i + 1
        ds.ImagePositionPatient = [*map(float, ds.ImagePositionPatient[:2]), float(ds.ImagePositionPatient[2]) + 5 * i]
        series.append(ds)
    hd.legacy.LegacyConvertedEnhancedCTImage(series, series_instance_uid=generate_uid(), series_number=9,
                                             sop_instance_uid=generate_uid(), instance_number=1).save_as(d / "mf.dcm")
    Image.fromarray(pydicom.dcmread(ct).pixel_array.astype(np.uint16)).save(d / "ct16.png")
    for name in ("anatomical.nii", "example4d.nii.gz"):
        shutil.copyfile(os.path.join(str(data_path), name), d / name)
    (d / "notes.txt").write_text("not an image")
    return d


def brighter_than_mean(model, batch, device):
    """Stands in for the network so that the right mask is known: logits are the grey level minus the image's
    mean, so the mask is the pixels brighter than the image's mean (follows the anatomy, never all or nothing)."""
    x = batch["image"][:, :1].float()
    return (x - x.mean(dim=(2, 3), keepdim=True)) * 20


def dice(a, b) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def medical_run(scans, tmp_path_factory):
    """One prediction over the folder (--frame 0 for the 4-D volume) by :func:`brighter_than_mean`; its output
    folder, rows and printout."""
    import contextlib
    import io
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.MonkeyPatch.context() as mp:
        mp.setattr(predict, "forward_batch", brighter_than_mean)
        out = run_predict("--model", "clipseg", "--size", "tiny", "--weights", "none", "--images", str(scans),
                          "--prompt", "liver", "--frame", "0", "--out", str(tmp_path_factory.mktemp("mp") / "p"),
                          "--batch-size", "16")
    with open(os.path.join(out, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    return out, rows, printed.getvalue()


def rows_of(rows, name):
    return [r for r in rows if os.path.basename(r["image"]) == name]


def test_predict_dicom_png_at_rows_x_cols_and_a_seg_referencing_the_source(medical_run, scans):
    import pydicom
    out, rows, _ = medical_run
    (r,) = rows_of(rows, "ct.dcm")
    src = pydicom.dcmread(scans / "ct.dcm", stop_before_pixels=True)
    mask = np.asarray(Image.open(os.path.join(out, r["mask"]))) > 0
    assert r["frame_or_slice"] == "" and mask.shape == (src.Rows, src.Columns) == (128, 128)
    assert Image.open(os.path.join(out, r["overlay"])).size == (128, 128)
    assert r["seg"] == "ct_seg.dcm" and r["nifti"] == ""
    seg = pydicom.dcmread(os.path.join(out, r["seg"]))
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "liver"
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence] == [src.SOPInstanceUID]
    assert np.array_equal(seg.pixel_array.astype(bool), mask)
    pixels = read_medical(str(scans / "ct.dcm")).pixels        # the mask is where the pixels are (not transposed)
    assert 0.1 < mask.mean() < 0.9 and dice(mask, pixels > pixels.mean()) > 0.95
    # area in mm^2: the pixel count times the file's PixelSpacing (0.661468 x 0.661468 mm)
    row_mm, col_mm = (float(v) for v in src.PixelSpacing)
    assert int(r["area_px"]) == mask.sum()
    assert float(r["area_mm2"]) == pytest.approx(int(r["area_px"]) * row_mm * col_mm, rel=1e-6)
    # the truncated copy of the same series (no extension: found by its preamble) is left out of the SEG and named
    assert "leaves out 1 unreadable file" in r["notes"]


def test_predict_multiframe_dicom_one_seg_with_a_frame_per_source_frame(medical_run, scans):
    import pydicom
    out, rows, printed = medical_run
    frames = rows_of(rows, "mf.dcm")
    src = pydicom.dcmread(scans / "mf.dcm", stop_before_pixels=True)
    assert [r["frame_or_slice"] for r in frames] == ["0", "1", "2"] and int(src.NumberOfFrames) == 3
    assert [r["mask"] for r in frames] == [f"mf_f00{k}_mask.png" for k in range(3)]
    assert {r["seg"] for r in frames} == {"mf_seg.dcm"}
    seg = pydicom.dcmread(os.path.join(out, "mf_seg.dcm"))
    assert seg.NumberOfFrames == 3
    refs = [f.DerivationImageSequence[0].SourceImageSequence[0] for f in seg.PerFrameFunctionalGroupsSequence]
    assert {x.ReferencedSOPInstanceUID for x in refs} == {src.SOPInstanceUID}
    assert sorted(int(x.ReferencedFrameNumber) for x in refs) == [1, 2, 3]
    for x, k in zip(refs, range(3)):
        png = np.asarray(Image.open(os.path.join(out, frames[int(x.ReferencedFrameNumber) - 1]["mask"]))) > 0
        assert np.array_equal(seg.pixel_array[k].astype(bool), png)
    # a multi-frame file without Frame of Reference: PNG masks per frame, no SEG, the reason printed and recorded
    sc = rows_of(rows, "sc2.dcm")
    assert [r["frame_or_slice"] for r in sc] == ["0", "1"] and all(r["seg"] == "" for r in sc)
    assert all("Frame of Reference" in r["notes"] for r in sc)
    assert all(os.path.exists(os.path.join(out, r["mask"])) for r in sc)
    assert "no DICOM SEG for" in printed and "sc2.dcm" in printed and "Traceback" not in printed


def test_predict_nifti_volumes_give_a_mask_volume_on_the_input_grid(medical_run, scans):
    import nibabel as nib
    out, rows, _ = medical_run
    for name, n_slices in (("anatomical.nii", 25), ("example4d.nii.gz", 24)):
        slices = rows_of(rows, name)
        assert [int(r["frame_or_slice"]) for r in slices] == list(range(n_slices))   # axial, the reader's default
        (nifti,) = {r["nifti"] for r in slices}
        src, mask = nib.load(scans / name), nib.load(os.path.join(out, nifti))
        assert mask.shape == src.shape[:3] and np.allclose(mask.affine, src.affine)
        # voxel (i, j, k) of the mask is voxel (i, j, k) of the input: the brighter-than-the-slice's-mean voxels
        # (axial slices: the file's 3rd axis is S here), up to the resizing to the model's input and back
        assert nib.aff2axcodes(src.affine)[2] == "S"
        data = np.asanyarray(src.dataobj)[..., 0] if len(src.shape) == 4 else np.asanyarray(src.dataobj)
        lo, hi = np.percentile(data, [0.5, 99.5])   # the reader's default window for volumes
        windowed = np.clip((data - lo) / (hi - lo), 0, 1)
        expect = windowed > windowed.mean(axis=(0, 1), keepdims=True)
        assert dice(np.asanyarray(mask.dataobj) > 0, expect) > 0.95
        assert all(r["mask"] == "" for r in slices)                                   # no slice PNGs by default
        for r in slices[::8]:   # each row's area is its slice of the written volume, cut as the reader cuts
            k = int(r["frame_or_slice"])
            assert read_medical_mask(os.path.join(out, nifti), slice=k).astype(bool).sum() == int(r["area_px"])
            zooms = src.header.get_zooms()
            assert float(r["area_mm2"]) == pytest.approx(int(r["area_px"]) * zooms[0] * zooms[1], rel=1e-5)
    assert not [f for f in os.listdir(out) if f.startswith(("anatomical_s", "example4d_s"))]


def test_predict_16bit_png_and_the_unreadable_files_listed(medical_run):
    out, rows, printed = medical_run
    (png16,) = rows_of(rows, "ct16.png")
    assert Image.open(os.path.join(out, png16["mask"])).size == (128, 128) and png16["area_mm2"] == ""
    assert not rows_of(rows, "IMCUT") and not rows_of(rows, "sr.dcm") and not rows_of(rows, "notes.txt")
    skipped = [line for line in printed.splitlines() if line.startswith("skipped: ")]
    assert any("IMCUT" in line and "truncated" in line for line in skipped)
    assert any("sr.dcm" in line and "no pixel data" in line for line in skipped)


def test_predict_slice_pngs_axis_and_nothing_readable(scans, tmp_path):
    vol = str(scans / "anatomical.nii")
    out = run_predict("--model", "clipseg", "--size", "tiny", "--weights", "none", "--images", vol,
                      "--axis", "0", "--slice-pngs", "--no-overlay", "--out", str(tmp_path / "p"), "--batch-size", "33")
    rows = list(read_rows_list(out))
    assert len(rows) == 33 and rows[4]["mask"] == "anatomical_s004_mask.png"
    assert Image.open(os.path.join(out, rows[4]["mask"])).size == (41, 25)      # sagittal: (A-P) x (S-I)
    import nibabel as nib
    assert nib.load(os.path.join(out, "anatomical_mask.nii.gz")).shape == (33, 41, 25)
    # nothing readable: one error naming each file (a 4-D volume without --frame is refused before the model loads)
    with pytest.raises(ValueError, match=r"nothing to predict.*example4d.nii.gz.*--frame"):
        run_predict("--model", "clipseg", "--size", "tiny", "--weights", "none", "--images",
                    str(scans / "example4d.nii.gz"), "--out", str(tmp_path / "q"))
    with pytest.raises(ValueError, match=r"nothing to predict.*IMCUT.*truncated.*sr.dcm.*no pixel data"):
        run_predict("--model", "clipseg", "--size", "tiny", "--weights", "none", "--images", str(scans / "IMCUT"),
                    str(scans / "sr.dcm"), "--out", str(tmp_path / "r"))
    assert not os.path.exists(tmp_path / "q") and not os.path.exists(tmp_path / "r")


def read_rows_list(out):
    with open(os.path.join(out, "predictions.csv")) as f:
        return list(csv.DictReader(f))
