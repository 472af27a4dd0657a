"""Small generated imaging files for tests: MedMNIST-format npz, PNG, DICOM, NIfTI."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_medmnist(
    path: Path,
    *,
    shape: tuple[int, ...] = (28, 28),
    classes: int = 2,
    counts: tuple[int, int, int] = (60, 12, 20),
    seed: int = 0,
) -> Path:
    """A MedMNIST-format npz (uint8 images, (N, 1) labels) whose class is visible:
    class c brightens a c-dependent region, so a model can learn it."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        labels = np.arange(n) % classes
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, *shape)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 + 4 * c : 6 + 4 * c] += 150
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(-1, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_dicom(path: Path, array: np.ndarray) -> Path:
    """A minimal single-frame 16-bit MONOCHROME2 DICOM written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.PatientID = "SYNTHETIC"
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.PixelData = array.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, array: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), str(path))
    return path
