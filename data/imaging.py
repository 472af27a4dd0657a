"""Imaging datasets: MedMNIST npz files, image folders, synthetic lesions.

MedMNIST ``.npz`` files, class-per-folder image trees (PNG/JPEG, DICOM, NIfTI
through MONAI ``LoadImage``), and a generated synthetic lesion dataset with
per-hospital acquisition differences.

Every image reaches the model as float32 ``(C, H, W)`` or ``(C, D, H, W)`` scaled
to [0, 1] and, when ``image-size`` is set, resized to that side length.
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from data.base import FederatedDataset, check_partition
from data.partition import partition_of, stratified_split
from data.spec import DataError, DatasetInfo, HospitalData, Split

# data.transforms (MONAI, ~10 s of import) is imported where images are prepared:
# reading a file's description (info(): shape, classes) and checking a run config
# before it starts need only numpy.

log = logging.getLogger(__name__)
# MONAI logs a warning per DICOM reader when the optional GPU codec is missing.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

TASK = "imaging"
MEDMNIST_SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------- shared


def channels_first(images: np.ndarray, source: str) -> np.ndarray:
    """Bring a MedMNIST-style array to ``(N, C, *spatial)``.

    ``(N, H, W)`` is 2D grayscale, ``(N, H, W, 3)`` 2D RGB, ``(N, D, H, W)`` a 3D
    volume and ``(N, D, H, W, C)`` a multi-channel volume (channels last, as
    MedMNIST stores them).
    """
    if images.ndim == 3:
        return images[:, None]
    if (
        images.ndim == 4
        and images.shape[-1] in (1, 3)
        and images.shape[-1] < min(images.shape[1:3])
    ):
        return np.moveaxis(images, -1, 1)
    if images.ndim == 4:
        return images[:, None]
    if images.ndim == 5 and images.shape[-1] in (1, 3):
        return np.moveaxis(images, -1, 1)
    raise DataError(
        f"{source}: images have shape {images.shape}; expected (N, H, W) gray, "
        "(N, H, W, 3) RGB or (N, D, H, W) volumes.",
        f"images have an unsupported shape {images.shape[1:]}",
    )


def prepare_images(images: np.ndarray, size: int) -> np.ndarray:
    """Scale intensities to [0, 1] and resize: ``(N, C, *spatial)`` -> float32."""
    from data.transforms import resize, scale_intensity

    return resize(scale_intensity(images), size)


def class_indices(labels: np.ndarray, source: str) -> np.ndarray:
    """Validate labels of shape (N,) or (N, 1) holding class indices 0, 1, ..."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"{source}: labels have shape {labels.shape}; expected one class index "
            "per image (multi-label data are not supported).",
            "labels are not one class index per image",
        )
    if labels.size and (
        not np.issubdtype(labels.dtype, np.number)
        or (labels < 0).any()
        or (labels != np.round(labels)).any()
    ):
        raise DataError(
            f"{source}: labels must be class indices 0, 1, ...; found "
            f"{labels[(labels < 0) | (labels != np.round(labels))][:3].tolist()}.",
            "labels are not class indices",
        )
    return labels.astype(np.int64)


def image_info(
    input_shape: tuple[int, ...],
    num_classes: int,
    class_names: tuple[str, ...],
    description: str,
) -> DatasetInfo:
    names = class_names or tuple(str(i) for i in range(num_classes))
    return DatasetInfo(
        task=TASK,
        input_shape=tuple(int(s) for s in input_shape),
        num_classes=num_classes,
        class_names=names,
        description=description,
    )


def image_hospital(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    held_out_fraction: float,
    seed: int,
    info: DatasetInfo,
    augment: bool,
) -> HospitalData:
    """Split one hospital's images into an (augmented) training and a held-out split."""
    if len(y) == 0:
        raise DataError(f"Hospital {name} has no images.", "empty partition")
    from data.transforms import ImageSplit

    keep, out = stratified_split(y, held_out_fraction, seed)
    return HospitalData(
        name=name,
        train=ImageSplit(x[keep], y[keep], augment_seed=seed if augment else None),
        val=Split(x[out], y[out]),
        info=info,
    )


def _check_labels_fit(y: np.ndarray, num_classes: int, source: str) -> None:
    if y.size and int(y.max()) >= num_classes:
        raise DataError(
            f"{source}: label {int(y.max())} is outside the {num_classes} classes "
            f"(0..{num_classes - 1}).",
            "a label is outside the model's classes",
        )


# --------------------------------------------------------------------------- MedMNIST


@dataclass(frozen=True)
class RawSplit:
    """One split of an npz file as stored: images ``(N, C, *spatial)``, labels."""

    images: np.ndarray
    labels: np.ndarray


def read_medmnist(path: Path) -> dict[str, RawSplit]:
    """Read a MedMNIST ``.npz`` file.

    ``<split>_images`` / ``<split>_labels`` are read for the splits present
    (``train`` is required). Shapes, channels and labels are checked and every
    problem names the file and key.
    """
    if not path.is_file():
        raise DataError(f"MedMNIST file not found: {path}", "data file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(
            f"{path}: not a readable .npz file ({err}).", "unreadable npz"
        ) from err
    if "train_images" not in arrays or "train_labels" not in arrays:
        raise DataError(
            f"{path}: missing train_images/train_labels; keys are "
            f"{', '.join(sorted(arrays)) or 'none'} (MedMNIST format expected).",
            "not a MedMNIST-format npz",
        )
    splits: dict[str, RawSplit] = {}
    for split in MEDMNIST_SPLITS:
        if f"{split}_images" not in arrays:
            continue
        if f"{split}_labels" not in arrays:
            raise DataError(
                f"{path}: {split}_images without {split}_labels.", "labels missing"
            )
        source = f"{path} [{split}_images]"
        images = channels_first(arrays[f"{split}_images"], source)
        labels = class_indices(arrays[f"{split}_labels"], f"{path} [{split}_labels]")
        if len(images) != len(labels):
            raise DataError(
                f"{path}: {len(images)} {split} images but {len(labels)} labels.",
                "image and label counts differ",
            )
        first = next(iter(splits.values()), None)
        if first is not None and images.shape[1:] != first.images.shape[1:]:
            raise DataError(
                f"{source}: images shaped {images.shape[1:]} (C, spatial) but train "
                f"images are {first.images.shape[1:]}.",
                "splits have different image shapes",
            )
        splits[split] = RawSplit(images, labels)
    return splits


class MedMNISTDataset(FederatedDataset):
    """Any MedMNIST v2 ``.npz`` (2D gray, 2D RGB, 3D; binary or multi-class).

    Simulation: hospitals share the file's **train** split (IID or Dirichlet by
    label); each keeps ``val-fraction`` of its share as its own held-out set. The
    file's **test** split is the server's held-out test set. The file's **val**
    split is left for model selection and ``medflower evaluate --split val``.
    Deployment: a hospital's own npz; its train split trains, its val split (or,
    when absent, a ``val-fraction`` share of train) is its held-out set.
    """

    name = "medmnist"
    task = TASK
    needs_path = True

    @cached_property
    def raw(self) -> dict[str, RawSplit]:
        return read_medmnist(Path(self.spec.data_path))

    def info(self) -> DatasetInfo:
        return self.info_of(self.raw, Path(self.spec.data_path).stem)

    def info_of(self, raw: dict[str, RawSplit], stem: str) -> DatasetInfo:
        train = raw["train"].images
        size = self.spec.image_size
        spatial = train.shape[2:] if size <= 0 else (size,) * (train.ndim - 2)
        top = max(int(s.labels.max()) for s in raw.values() if s.labels.size)
        num_classes = max(2, top + 1, len(self.spec.class_names))
        _check_labels_fit(np.array([top]), num_classes, stem)
        return image_info(
            (train.shape[1], *spatial),
            num_classes,
            self.spec.class_names,
            f"MedMNIST {stem} ({'3D' if train.ndim == 5 else '2D'})",
        )

    def split(self, name: str) -> Split:
        """Return a whole split of the file, prepared (``train``, ``val``, ``test``)."""
        if name not in self.raw:
            raise DataError(
                f"{self.spec.data_path}: no '{name}' split; the file has "
                f"{', '.join(self.raw)}.",
                f"no '{name}' split",
            )
        raw = self.raw[name]
        return Split(prepare_images(raw.images, self.spec.image_size), raw.labels)

    def hospital(self, partition_id: int, num_partitions: int) -> HospitalData:
        check_partition(partition_id, num_partitions)
        train = self.raw["train"]
        part = partition_of(
            train.labels,
            partition_id,
            num_partitions,
            method=self.spec.partitioner,
            alpha=self.spec.dirichlet_alpha,
            seed=self.spec.seed,
        )
        idx = np.sort(part)
        return image_hospital(
            f"hospital-{partition_id}",
            prepare_images(train.images[idx], self.spec.image_size),
            train.labels[idx],
            held_out_fraction=self.spec.val_fraction,
            seed=self.spec.seed + 1 + partition_id,
            info=self.info(),
            augment=self.spec.augment,
        )

    def local_hospital(self, path: str, name: str) -> HospitalData:
        raw = read_medmnist(Path(path))
        info = self.info_of(raw, Path(path).stem)
        size = self.spec.image_size
        train = raw["train"]
        x = prepare_images(train.images, size)
        seed = self.spec.seed
        if "val" in raw and len(raw["val"].labels):
            from data.transforms import ImageSplit

            return HospitalData(
                name=name,
                train=ImageSplit(
                    x, train.labels, augment_seed=seed if self.spec.augment else None
                ),
                val=Split(prepare_images(raw["val"].images, size), raw["val"].labels),
                info=info,
            )
        return image_hospital(
            name,
            x,
            train.labels,
            held_out_fraction=self.spec.val_fraction,
            seed=seed,
            info=info,
            augment=self.spec.augment,
        )

    def server_test(self) -> Split:
        return self.split("test")


# --------------------------------------------------------------------------- folders

# File suffix -> MONAI reader. 2D images keep numpy's row-major (H, W) order so a
# PNG written from an array reads back as that array.
READERS = {
    ".png": "pil",
    ".jpg": "pil",
    ".jpeg": "pil",
    ".bmp": "pil",
    ".tif": "pil",
    ".tiff": "pil",
    ".dcm": "dicom",
    ".nii": "nifti",
    ".nii.gz": "nifti",
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _reader(kind: str):
    from monai.data import NibabelReader, PILReader, PydicomReader

    factories = {
        "pil": lambda: PILReader(reverse_indexing=False),
        "dicom": lambda: PydicomReader(swap_ij=False),
        "nifti": lambda: NibabelReader(),
    }
    return factories[kind]()


def load_image_file(path: Path) -> np.ndarray:
    """Read one image as ``(C, *spatial)`` through MONAI ``LoadImage``.

    DICOM rescale slope/intercept are applied by the reader; an alpha channel is
    dropped. Unreadable files raise DataError naming the file.
    """
    from monai.transforms import LoadImage

    kind = READERS[_suffix(path)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reader plugin notices, not problems
            # dtype=None keeps 8-bit PNG/JPEG as uint8, so scaling treats them
            # like MedMNIST (0..255 -> 0..1) instead of per-image min-max.
            image = LoadImage(
                reader=_reader(kind),
                image_only=True,
                ensure_channel_first=True,
                dtype=None,
            )(str(path))
    except Exception as err:  # readers raise many unrelated types on bad files
        raise DataError(
            f"{path}: cannot be read as a {kind} image ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}).",
            "an image file could not be read",
        ) from err
    array = np.asarray(image)
    if kind == "pil" and array.shape[0] in (2, 4):  # gray+alpha / RGBA: drop alpha
        array = array[: array.shape[0] - 1]
    if kind == "nifti" and array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]  # a single-slice volume is a 2D image
    if array.ndim not in (3, 4) or min(array.shape[1:]) < 1:
        raise DataError(
            f"{path}: image of shape {array.shape[1:]} with {array.shape[0]} "
            "channel(s) is neither 2D nor 3D.",
            "an image is neither 2D nor 3D",
        )
    return array


def list_image_folder(
    root: Path, class_names: tuple[str, ...] = ()
) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """List the files and labels of ``root/<class>/<files>``.

    Classes are the sorted folder names unless ``class_names`` fixes them (then a
    missing folder is allowed and an unlisted one is an error). Files of unknown
    type are skipped with a note in the log.
    """
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}", "data folder not found")
    folders = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if class_names:
        unknown = sorted(set(folders) - set(class_names))
        if unknown:
            raise DataError(
                f"{root}: class folder(s) {unknown} are not in class-names "
                f"({', '.join(class_names)}).",
                "a class folder is not among the run's classes",
            )
        names = class_names
    else:
        names = tuple(folders)
    if len(names) < 2:
        raise DataError(
            f"{root}: found {len(names)} class folder(s) "
            f"({', '.join(names) or 'none'}); "
            "need root/<class>/<images> with at least two classes.",
            "fewer than two class folders",
        )
    files: list[Path] = []
    labels: list[int] = []
    skipped = 0
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if _suffix(path) not in READERS:
                skipped += 1
                continue
            files.append(path)
            labels.append(label)
    if skipped:
        log.warning("%s: skipped %d file(s) that are not images", root, skipped)
    if not files:
        raise DataError(
            f"{root}: no image files ({', '.join(sorted(READERS))}).", "no images"
        )
    return files, np.asarray(labels, dtype=np.int64), names


def load_images(paths: list[Path], size: int) -> np.ndarray:
    """Read, scale and resize image files into one ``(N, C, *spatial)`` array.

    Every image must have the channels and dimensionality of the first one, and
    the same size too unless ``size`` resizes them; otherwise the error names the
    offending file.
    """
    out: list[np.ndarray] = []
    first: tuple[Path, tuple[int, ...]] | None = None
    for path in paths:
        image = load_image_file(path)
        if first is None:
            first = (path, image.shape)
        ref_path, ref = first
        if image.shape[0] != ref[0]:
            raise DataError(
                f"{path}: {image.shape[0]} channel(s) but {ref_path.name} has "
                f"{ref[0]}; "
                "all images must share their channels.",
                "images have different numbers of channels",
            )
        if image.ndim != len(ref):
            raise DataError(
                f"{path}: a {image.ndim - 1}D image among {len(ref) - 1}D images.",
                "2D and 3D images are mixed",
            )
        if size <= 0 and image.shape != ref:
            raise DataError(
                f"{path}: size {image.shape[1:]} differs from {ref_path.name} "
                f"{ref[1:]}; set image-size to resize all images.",
                "images have different sizes and image-size is 0",
            )
        out.append(prepare_images(image[None], size)[0])
    return np.stack(out)


class ImageFolderDataset(FederatedDataset):
    """Images in ``root/<class>/<files>`` (PNG/JPEG, DICOM ``.dcm``, NIfTI).

    Simulation: ``data-path`` is one pooled folder; ``test-fraction`` of it
    (stratified) is the server's test set and the rest is split across hospitals
    like a table. Deployment: each hospital's ``data-path`` is its own folder with
    the same class folders (set ``class-names`` so the label order cannot differ
    when a hospital lacks a class).
    """

    name = "image-folder"
    task = TASK
    needs_path = True

    @cached_property
    def listing(self) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
        return list_image_folder(Path(self.spec.data_path), self.spec.class_names)

    def _info_for(
        self, files: list[Path], names: tuple[str, ...], source: str
    ) -> DatasetInfo:
        probe = load_image_file(files[0])
        size = self.spec.image_size
        spatial = probe.shape[1:] if size <= 0 else (size,) * (probe.ndim - 1)
        return image_info(
            (probe.shape[0], *spatial), len(names), names, f"images in {source}"
        )

    def info(self) -> DatasetInfo:
        files, _, names = self.listing
        return self._info_for(files, names, Path(self.spec.data_path).name)

    @cached_property
    def _pool_and_test(self) -> tuple[np.ndarray, np.ndarray]:
        _, y, _ = self.listing
        return stratified_split(y, self.spec.test_fraction, self.spec.seed)

    def hospital(self, partition_id: int, num_partitions: int) -> HospitalData:
        check_partition(partition_id, num_partitions)
        files, y, _ = self.listing
        pool, _ = self._pool_and_test
        part = partition_of(
            y[pool],
            partition_id,
            num_partitions,
            method=self.spec.partitioner,
            alpha=self.spec.dirichlet_alpha,
            seed=self.spec.seed,
        )
        idx = np.sort(pool[part])
        return image_hospital(
            f"hospital-{partition_id}",
            load_images([files[i] for i in idx], self.spec.image_size),
            y[idx],
            held_out_fraction=self.spec.val_fraction,
            seed=self.spec.seed + 1 + partition_id,
            info=self.info(),
            augment=self.spec.augment,
        )

    def local_hospital(self, path: str, name: str) -> HospitalData:
        files, y, names = list_image_folder(Path(path), self.spec.class_names)
        return image_hospital(
            name,
            load_images(files, self.spec.image_size),
            y,
            held_out_fraction=self.spec.val_fraction,
            seed=self.spec.seed,
            info=self._info_for(files, names, Path(path).name),
            augment=self.spec.augment,
        )

    def server_test(self) -> Split:
        files, y, _ = self.listing
        _, test = self._pool_and_test
        return Split(
            load_images([files[i] for i in test], self.spec.image_size), y[test]
        )

    def all_images(self) -> Split:
        """Every image of the folder (for evaluating a model on a new site)."""
        files, y, _ = self.listing
        return Split(load_images(files, self.spec.image_size), y)


# --------------------------------------------------------------------------- synthetic


@dataclass(frozen=True)
class Acquisition:
    """How one simulated site's scanner renders the same anatomy."""

    gain: float
    offset: float
    noise: float
    blur: float

    @classmethod
    def of_site(cls, seed: int, site: int) -> Acquisition:
        rng = np.random.default_rng([seed, 7919, site])
        return cls(
            gain=float(rng.uniform(0.7, 1.3)),
            offset=float(rng.uniform(-0.08, 0.08)),
            noise=float(rng.uniform(0.02, 0.10)),
            blur=float(rng.uniform(0.0, 1.2)),
        )


def synthetic_lesion_images(
    n: int, *, size: int, prevalence: float, acquisition: Acquisition, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` synthetic 2D scans (uint8 ``(n, 1, size, size)``) and labels.

    Background: smooth random "tissue" texture under a vignette, with a few small
    faint round structures in every image. Label 1 adds one lesion: an ellipse of
    random size, orientation and contrast with a soft border. The site's
    acquisition then blurs, scales, offsets and adds noise. Deterministic in
    ``seed``.
    """
    from monai.transforms import GaussianSmooth

    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < prevalence).astype(np.int64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    vignette = 1.0 - 0.8 * (xx**2 + yy**2)
    # One MONAI call smooths the whole batch: images ride on the channel axis.
    noise = rng.normal(size=(n, size, size)).astype(np.float32)
    texture = np.asarray(GaussianSmooth(sigma=size / 10)(noise)) if n else noise
    texture /= np.abs(texture).max(axis=(1, 2), keepdims=True) + 1e-6
    images = 0.35 + 0.12 * texture
    for i in range(n):
        for _ in range(int(rng.integers(1, 4))):  # benign small structures
            cy, cx = rng.uniform(-0.4, 0.4, size=2)
            r = rng.uniform(0.02, 0.05)
            images[i] += 0.12 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        if labels[i]:
            cy, cx = rng.uniform(-0.25, 0.25, size=2)
            a, b = rng.uniform(0.06, 0.16), rng.uniform(0.05, 0.12)
            theta = rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
            v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
            edge = np.clip(((u / a) ** 2 + (v / b) ** 2 - 1.0) * 6.0, -30, 30)
            images[i] += rng.uniform(0.12, 0.3) / (1.0 + np.exp(edge))
    images = images * vignette
    if acquisition.blur > 0.05 and n:
        images = np.asarray(GaussianSmooth(sigma=acquisition.blur)(images))
    images = acquisition.gain * images + acquisition.offset
    images = images + rng.normal(scale=acquisition.noise, size=images.shape)
    out = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
    return out[:, None], labels


class SyntheticLesionsDataset(FederatedDataset):
    """Generated (synthetic, not patient) lesion-vs-normal 2D scans for the demo.

    Each hospital gets its own images from its own simulated scanner (gain,
    offset, noise, blur) and its own lesion prevalence, so the federation sees
    real acquisition shift; the server's test set mixes every site's scanner.
    Nothing is read from disk and every image is a function of ``seed``.
    """

    name = "synthetic-lesions"
    task = TASK
    base_size = 32
    records_per_hospital = 160
    test_records = 240
    test_sites = 8

    @property
    def size(self) -> int:
        return self.spec.image_size or self.base_size

    def info(self) -> DatasetInfo:
        return image_info(
            (1, self.size, self.size),
            2,
            self.spec.class_names or ("normal", "lesion"),
            "synthetic lesions (generated, not patient data)",
        )

    def _site_images(
        self, site: int, n: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        prevalence = float(
            np.random.default_rng([self.spec.seed, 31, site]).uniform(0.3, 0.6)
        )
        images, labels = synthetic_lesion_images(
            n,
            size=self.size,
            prevalence=prevalence,
            acquisition=Acquisition.of_site(self.spec.seed, site),
            seed=seed,
        )
        return prepare_images(images, 0), labels

    def hospital(self, partition_id: int, num_partitions: int) -> HospitalData:
        check_partition(partition_id, num_partitions)
        n = self.records_per_hospital + 40 * (partition_id % 3)
        x, y = self._site_images(partition_id, n, self.spec.seed * 1000 + partition_id)
        return image_hospital(
            f"hospital-{partition_id}",
            x,
            y,
            held_out_fraction=self.spec.val_fraction,
            seed=self.spec.seed + 1 + partition_id,
            info=self.info(),
            augment=self.spec.augment,
        )

    def server_test(self) -> Split:
        per_site = self.test_records // self.test_sites
        parts = [
            self._site_images(site, per_site, self.spec.seed * 1000 + 500 + site)
            for site in range(self.test_sites)
        ]
        return Split(
            np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        )
