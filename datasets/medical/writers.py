"""Masks written back in their source's geometry: a NIfTI volume on the source's grid, a DICOM SEG that
references its source images.  Both are written through a temporary file and a rename (never half-written)."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from .volume import AXES, canonical_volume, check_axis, from_view, voxels_and_affine

SOFTWARE = "medvlsm-toolkit"


def _tmp_beside(path: str, suffix: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=folder)
    os.close(fd)
    return tmp


def _replace(tmp: str, path: str) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_nifti_mask(masks, like: str, path: str, axis: int | None = 2, frame: int | None = None) -> str:
    """Write a uint8 mask volume with the shape and affine of the NIfTI (or ITK) file ``like``; returns ``path``.

    ``masks``: with ``axis`` (default 2) the 2-D masks of the slices along that axis, as
    ``read_medical(like, slice=k, axis=axis)`` showed them: an array (n_slices, rows, cols) or a dict
    ``{k: rows x cols}`` (slices not given are 0); they go back through the inverse of the reading rule
    (:mod:`.volume`), so voxel (i, j, k) of the mask is the voxel (i, j, k) of ``like``.  With ``axis=None``:
    a volume already in ``like``'s own voxel order and shape.  ``frame``: the frame of a 4-D ``like`` (the mask
    is 3-D).  Values are kept (0/1, or labels); bool becomes 0/1.  ``path`` ends in ``.nii`` or ``.nii.gz``.
    """
    import nibabel as nib
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
    if not path.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"write_nifti_mask: {path} must end in .nii or .nii.gz")
    data, affine = voxels_and_affine(like, ValueError, frame)
    if axis is None:
        volume = np.asarray(masks)
        if volume.shape != data.shape:
            raise ValueError(f"write_nifti_mask: the mask volume has shape {volume.shape} but {like} has {data.shape}")
    else:
        axis = check_axis(axis)
        canonical = canonical_volume(like, frame)[0]
        n = canonical.shape[axis]
        items = masks.items() if isinstance(masks, dict) else enumerate(masks)
        out = np.zeros(canonical.shape, dtype=np.uint8)
        want = tuple(s for a, s in enumerate(canonical.shape) if a != axis)[::-1]  # (rows, cols) as shown
        given = 0
        for k, m in items:
            m = np.asarray(m)
            if not 0 <= int(k) < n:
                raise ValueError(f"write_nifti_mask: slice {k} does not exist; {like} has {n} along axis {axis}")
            if m.shape != want:
                raise ValueError(f"write_nifti_mask: slice {k} has shape {m.shape} but the slices of {like} along "
                                 f"axis {axis} ({AXES[axis]}) are {want} (rows, cols)")
            index = [slice(None)] * 3
            index[axis] = int(k)
            out[tuple(index)] = from_view(m.astype(np.uint8))
            given += 1
        if not isinstance(masks, dict) and given != n:
            raise ValueError(f"write_nifti_mask: {given} slices given but {like} has {n} along axis {axis}; pass a "
                             f"dict {{slice: mask}} for some of them")
        back = ornt_transform(axcodes2ornt(("R", "A", "S")), io_orientation(affine))
        volume = apply_orientation(out, back)
    volume = volume.astype(np.uint8) if volume.dtype == bool or volume.max(initial=0) <= 255 else volume
    header = None
    if like.lower().endswith((".nii", ".nii.gz")):
        header = nib.load(like).header.copy()
    img = nib.Nifti1Image(np.ascontiguousarray(volume), affine, header=header)
    img.set_data_dtype(volume.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    if header is not None:  # the source's qform/sform codes, so viewers place the mask where the image is
        img.set_qform(affine, code=int(header["qform_code"]) or 1)
        img.set_sform(affine, code=int(header["sform_code"]) or 1)
    suffix = ".nii.gz" if path.lower().endswith(".gz") else ".nii"
    tmp = _tmp_beside(path, suffix)
    try:
        nib.save(img, tmp)
        _replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _name(ds) -> str:
    return str(getattr(ds, "filename", None) or ds.get("SOPInstanceUID", "the source"))


def write_dicom_seg(masks, source_datasets, path: str, label: str = "target", model_name: str = "segmentation model",
                    version: str = "1", property_category=None, property_type=None, series_number: int = 300) -> str:
    """Write a DICOM Segmentation (highdicom, BINARY, one segment) that references its source images; returns
    ``path``.

    ``source_datasets``: pydicom Datasets or paths of one series: one multi-frame instance, or the single-frame
    instances of the series in any order.  ``masks``: one rows x cols mask per source frame, in the order of the
    sources (and of the frames of a multi-frame source): an array (frames, rows, cols) or a list; a 2-D array for
    one single-frame source.  ``label`` names the segment; ``property_category``/``property_type`` are
    pydicom/highdicom codes (default: Tissue / Tissue, SNOMED CT 85756007).  One SEG per series: call once per
    series.  Every source frame gets a frame in the SEG (empty ones too), so frame i of the SEG is frame i of
    the source."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    sources = [pydicom.dcmread(s) if isinstance(s, (str, os.PathLike)) else s for s in
               (source_datasets if isinstance(source_datasets, (list, tuple)) else [source_datasets])]
    if not sources:
        raise ValueError("write_dicom_seg: no source image given")
    series = {str(s.get("SeriesInstanceUID", "")) for s in sources}
    if len(series) > 1:
        raise ValueError(f"write_dicom_seg: the sources come from {len(series)} series; write one SEG per series")
    frames = sum(int(s.get("NumberOfFrames", 1) or 1) for s in sources)
    if len(sources) > 1 and frames != len(sources):
        raise ValueError("write_dicom_seg: several sources must be single-frame instances of one series")
    arr = np.asarray(masks)
    arr = arr[None] if arr.ndim == 2 else arr
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if arr.shape != (frames, rows, cols):
        raise ValueError(f"write_dicom_seg: masks have shape {arr.shape} but the sources have {frames} frame(s) of "
                         f"{rows} x {cols}")
    category = property_category or codes.SCT.Tissue
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label=label, segmented_property_category=category,
        segmented_property_type=property_type or codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=model_name[:64], family=codes.DCM.ArtificialIntelligence, version=str(version)[:64]))
    if frames > 1 and "FrameOfReferenceUID" not in sources[0]:
        raise ValueError(f"write_dicom_seg: {_name(sources[0])} has {frames} frames and no Frame of Reference "
                         f"(an ultrasound cine?): highdicom writes a SEG for such a source only when it has one frame; "
                         f"keep the PNG masks of its frames instead")
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=(arr > 0).astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
            series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer=SOFTWARE, manufacturer_model_name=model_name[:64], software_versions=SOFTWARE,
            device_serial_number="0", omit_empty_frames=False, content_label="PREDICTION")
    except (ValueError, AttributeError, TypeError, KeyError) as e:
        raise ValueError(f"write_dicom_seg: highdicom cannot make a SEG for {_name(sources[0])}: {e}") from None
    tmp = _tmp_beside(path, ".dcm")
    try:
        seg.save_as(tmp)
        _replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
