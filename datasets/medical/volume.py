"""Volumes (NIfTI with nibabel; MetaImage/NRRD with SimpleITK) as 2-D slices whose image and mask line up.

The slicing rule, the same for images and masks and undone exactly by :func:`datasets.medical.write_nifti_mask`:

1. A 4-D volume needs ``frame`` (the index on its 4th axis); a 4th axis of length 1 is dropped.  A 2-D file is a
   volume of one slice.
2. The volume is brought to the closest canonical orientation, RAS+ (nibabel's ``as_closest_canonical``:
   voxel axes permuted and flipped, never resampled); ITK files are read into the same RAS+ frame from their
   origin, spacing and direction (LPS in ITK).  An image and its mask with the same shape and affine therefore
   give the same slices.
3. ``axis`` picks the canonical axis to slice along: 2 = axial (default), 1 = coronal, 0 = sagittal.
4. A slice is shown as a DICOM viewer shows it: the second remaining axis's + direction at the top (anterior in
   axial, superior in coronal and sagittal), the first remaining axis reversed from left to right (the patient's
   right on the image's left in axial and coronal, anterior on the left in sagittal): ``image = s[::-1, ::-1].T``
   for the canonical slice ``s``.  Row spacing is the voxel size along the second remaining axis, column
   spacing along the first, both in mm.
"""
from __future__ import annotations

import functools
import os

import numpy as np

NIFTI_EXTS = (".nii", ".nii.gz")
ITK_EXTS = (".mhd", ".mha", ".nrrd", ".nhdr")
VOLUME_EXTS = NIFTI_EXTS + ITK_EXTS
AXES = {0: "sagittal", 1: "coronal", 2: "axial"}


def is_volume(path: str) -> bool:
    return path.lower().endswith(VOLUME_EXTS)


def _nifti(path: str, error):
    import nibabel as nib
    try:
        return nib.load(path)
    except FileNotFoundError:
        raise error(f"volume file not found: {path}") from None
    except Exception as e:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, ValueError
        raise error(f"cannot read NIfTI {path}: {type(e).__name__}: {e} (the file is corrupt or truncated)") from None


def _itk(path: str, error) -> tuple[np.ndarray, np.ndarray]:
    """(voxels in (x, y, z) order, RAS+ affine) of an ITK-readable file."""
    import SimpleITK as sitk
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise error(f"cannot read {path} with SimpleITK: {msg} (for .mhd the .raw file must sit beside it)") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise error(f"{path} has {img.GetNumberOfComponentsPerPixel()} components per voxel; expected a grey volume")
    dim = img.GetDimension()
    if dim not in (2, 3):
        raise error(f"{path} is a {dim}-D ITK image; this reader takes 2-D and 3-D ones (convert 4-D data to NIfTI)")
    arr = sitk.GetArrayFromImage(img).T  # SimpleITK gives (z, y, x)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    lps = np.eye(4)
    lps[:dim, :dim] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)
    lps[:dim, 3] = img.GetOrigin()
    return arr, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS


def voxels_and_affine(path: str, error=ValueError, frame: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 3-D voxel array in the file's own order (scaling applied) and its RAS+ affine; rule 1 of the module."""
    if path.lower().endswith(NIFTI_EXTS):
        img = _nifti(path, error)
        shape, affine = img.shape, np.asarray(img.affine, dtype=np.float64)
        if len(shape) == 4 and shape[3] > 1:
            if frame is None:
                raise error(f"{path} is a 4-D volume {tuple(shape)}: name the frame on its 4th axis "
                            f"(frame=0..{shape[3] - 1}, --frame)")
            if not 0 <= int(frame) < shape[3]:
                raise error(f"{path} has {shape[3]} frames on its 4th axis; frame {frame} does not exist")
            data = np.asanyarray(img.dataobj[..., int(frame)])
        else:
            data = np.asanyarray(img.dataobj)
    else:
        data, affine = _itk(path, error)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise error(f"{path} has {data.ndim} dimensions {data.shape}; expected a 2-D, 3-D or 4-D (with frame) volume")
    return data, affine


@functools.lru_cache(maxsize=4)  # make_manifest and the loader read the slices of one volume one after another
def _canonical(path: str, mtime: int, frame: int | None) -> tuple[np.ndarray, np.ndarray, tuple]:
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
    data, affine = voxels_and_affine(path, _CachedError, frame)
    ornt = io_orientation(affine)
    canonical = np.ascontiguousarray(apply_orientation(data, ornt))
    affine_c = affine @ inv_ornt_aff(ornt, data.shape)
    zooms = tuple(float(z) for z in np.sqrt((affine_c[:3, :3] ** 2).sum(axis=0)))
    canonical.setflags(write=False)
    return canonical, affine_c, zooms


class _CachedError(ValueError):
    """Raised inside the cached loader, turned into the caller's error class."""


def canonical_volume(path: str, frame: int | None = None, error=ValueError) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(RAS+ voxel array, its affine, voxel sizes in mm) of ``path`` (rule 2), cached for the last few volumes."""
    try:
        return _canonical(os.path.abspath(path), os.stat(path).st_mtime_ns, None if frame is None else int(frame))
    except FileNotFoundError:
        raise error(f"volume file not found: {path}") from None
    except _CachedError as e:
        raise error(str(e)) from None


def check_axis(axis) -> int:
    if axis is None:
        return 2
    if int(axis) not in AXES:
        raise ValueError(f"axis {axis!r}: use 0 (sagittal), 1 (coronal) or 2 (axial) of the RAS+ volume")
    return int(axis)


def slice_count(path: str, axis=None, frame: int | None = None, error=ValueError) -> int:
    return canonical_volume(path, frame, error)[0].shape[check_axis(axis)]


def to_view(canonical_slice: np.ndarray) -> np.ndarray:
    """Rule 4: a canonical 2-D slice as a viewer shows it."""
    return np.ascontiguousarray(canonical_slice[::-1, ::-1].T)


def from_view(image: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_view`."""
    return np.ascontiguousarray(np.asarray(image).T[::-1, ::-1])


def volume_slice(path: str, index: int | None, axis=None, frame: int | None = None,
                 error=ValueError) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(slice values as shown, the whole canonical volume, spacing (row, col) mm) of slice ``index``.  A volume of
    one slice along ``axis`` needs no index."""
    axis = check_axis(axis)
    volume, _, zooms = canonical_volume(path, frame, error)
    n = volume.shape[axis]
    if index is None:
        if n != 1:
            raise error(f"{path} has {n} slices along axis {axis} ({AXES[axis]}): read one with slice=0..{n - 1} "
                        f"(make_manifest makes one record per slice)")
        index = 0
    if not 0 <= int(index) < n:
        raise error(f"{path} has {n} slices along axis {axis} ({AXES[axis]}); slice {index} does not exist")
    rest = [a for a in range(3) if a != axis]
    return to_view(np.take(volume, int(index), axis=axis)), volume, (zooms[rest[1]], zooms[rest[0]])


def read_voxels(path: str, error=ValueError) -> np.ndarray:
    """The voxel array as stored, in SimpleITK's (z, y, x) order with singleton axes dropped (NIfTI with nibabel,
    other formats with SimpleITK): for converters that keep a release's own pixel layout (CAMUS)."""
    if path.lower().endswith(NIFTI_EXTS):
        img = _nifti(path, error)
        try:
            return np.squeeze(np.asanyarray(img.dataobj).T)
        except Exception as e:  # a truncated .nii.gz fails only when its data are read
            raise error(f"cannot read NIfTI {path}: {type(e).__name__}: {e} (the file is corrupt or truncated)") \
                from None
    return np.squeeze(_itk(path, error)[0].T)


def check_same_grid(image: str, mask: str, frame: int | None = None, error=ValueError) -> None:
    """A mask volume must have its image's shape and affine (to 1e-4 mm): otherwise its slices would not be the
    image's slices.  Nothing is resampled."""
    img_data, img_aff = voxels_and_affine(image, error, frame)
    mask_data, mask_aff = voxels_and_affine(mask, error, frame if _is_4d(mask) else None)
    if img_data.shape != mask_data.shape:
        raise error(f"mask {mask} has shape {mask_data.shape} but its image {image} has {img_data.shape}; a mask "
                    f"volume must have its image's grid (nothing is resampled)")
    if not np.allclose(img_aff, mask_aff, atol=1e-4):
        raise error(f"mask {mask} has another affine (voxel-to-world) than its image {image} (largest difference "
                    f"{np.abs(img_aff - mask_aff).max():.4g}): it would not line up; resample the mask to the image")


def _is_4d(path: str) -> bool:
    if path.lower().endswith(NIFTI_EXTS):
        import nibabel as nib
        try:
            shape = nib.load(path).shape
        except Exception:
            return False
        return len(shape) == 4 and shape[3] > 1
    return False
