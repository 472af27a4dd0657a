"""Imaging data: MedMNIST npz, image folders (PNG/DICOM/NIfTI), synthetic lesions."""

import hashlib

import numpy as np
import pytest
import torch
from support.imaging import write_dicom, write_medmnist, write_nifti, write_png

from app.config import ConfigError, RunConfig
from data.imaging import (
    Acquisition,
    ImageFolderDataset,
    MedMNISTDataset,
    SyntheticLesionsDataset,
    load_image_file,
    synthetic_lesion_images,
)
from data.spec import DataError, DataSpec
from data.transforms import BatchAugment, ImageSplit
from models.training import make_loader

BREAST_SHA256 = "3a22d2a4625e7dd8903f0f59030e81a3d0c222bece2e5e10927456cb50efdec1"


def medmnist(path, **kw) -> MedMNISTDataset:
    return MedMNISTDataset(DataSpec(dataset="medmnist", data_path=str(path), **kw))


# ------------------------------------------------------------------ MedMNIST npz


@pytest.mark.parametrize(
    ("shape", "classes", "input_shape"),
    [
        ((28, 28), 2, (1, 28, 28)),
        ((28, 28, 3), 4, (3, 28, 28)),
        ((16, 16, 16), 2, (1, 16, 16, 16)),
    ],
    ids=["2d-gray-binary", "2d-rgb-4-classes", "3d"],
)
def test_npz_layouts_and_partitions(tmp_path, shape, classes, input_shape):
    path = write_medmnist(tmp_path / "x.npz", shape=shape, classes=classes)
    ds = medmnist(path, partitioner="dirichlet", dirichlet_alpha=0.5)
    info = ds.info()
    assert info.task == "imaging" and info.input_shape == input_shape
    assert info.num_classes == classes
    sites = [ds.hospital(i, 3) for i in range(3)]
    # every train record goes to exactly one hospital (train + its held-out share)
    assert sum(len(s.train) + len(s.val) for s in sites) == 60
    for s in sites:
        assert s.train.x.shape[1:] == input_shape and s.train.x.dtype == np.float32
        assert 0.0 <= s.train.x.min() and s.train.x.max() <= 1.0
        assert isinstance(s.train, ImageSplit) and s.train.augment_seed is not None
    assert len({s.train.augment_seed for s in sites}) == 3  # seeded per hospital
    test = ds.server_test()
    assert len(test) == 20 and test.x.shape[1:] == input_shape
    assert len(ds.split("val")) == 12


def test_npz_resize_to_image_size(tmp_path):
    path = write_medmnist(tmp_path / "x.npz")
    ds = medmnist(path, image_size=32)
    assert ds.info().input_shape == (1, 32, 32)
    assert ds.server_test().x.shape == (20, 1, 32, 32)
    three_d = medmnist(
        write_medmnist(tmp_path / "v.npz", shape=(16, 16, 16)), image_size=8
    )
    assert three_d.server_test().x.shape == (20, 1, 8, 8, 8)


def test_npz_intensity_scaling_keeps_8bit_scale(tmp_path):
    path = write_medmnist(tmp_path / "x.npz")
    raw = np.load(path)["test_images"]
    x = medmnist(path).server_test().x
    np.testing.assert_allclose(x[:, 0], raw / 255.0, atol=1e-6)


def test_local_hospital_uses_its_own_npz_val_split(tmp_path):
    path = write_medmnist(tmp_path / "site.npz", counts=(40, 10, 8))
    site = medmnist(tmp_path / "other.npz").local_hospital(str(path), "site-a")
    assert site.name == "site-a" and len(site.train) == 40 and len(site.val) == 10


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"test_images": np.zeros((2, 28, 28), np.uint8)}, "missing train_images"),
        (
            {
                "train_images": np.zeros((3, 28, 28), np.uint8),
                "train_labels": np.zeros((2, 1), np.uint8),
            },
            "3 train images but 2 labels",
        ),
        (
            {
                "train_images": np.zeros((3, 28, 28), np.uint8),
                "train_labels": np.zeros((3, 14), np.uint8),
            },
            "multi-label",
        ),
        (
            {
                "train_images": np.zeros((3, 28, 28), np.uint8),
                "train_labels": np.array([[0], [-1], [1]]),
            },
            "class indices",
        ),
        (
            {
                "train_images": np.zeros((3, 28, 28), np.uint8),
                "train_labels": np.zeros((3, 1), np.uint8),
                "test_images": np.zeros((2, 28, 28, 3), np.uint8),
                "test_labels": np.zeros((2, 1), np.uint8),
            },
            "test_images",
        ),
        (
            {
                "train_images": np.zeros((3, 2, 2, 2, 2, 2), np.uint8),
                "train_labels": np.zeros((3, 1), np.uint8),
            },
            "unsupported|expected",
        ),
    ],
    ids=["no-train", "count", "multilabel", "negative-label", "channels-differ", "6d"],
)
def test_bad_npz_names_file_and_problem(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as err:
        medmnist(path).info()
    assert "bad.npz" in str(err.value)
    assert "bad.npz" not in err.value.public_reason  # no path leaves a hospital


def test_corrupt_npz(tmp_path):
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="corrupt.npz: not a readable"):
        medmnist(path).info()


def test_real_breastmnist(shared_data):
    path = shared_data / "medmnist" / "breastmnist.npz"
    if not path.is_file():
        pytest.skip("breastmnist.npz absent")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == BREAST_SHA256
    ds = medmnist(path, partitioner="dirichlet")
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [546, 78, 156]
    assert ds.info().input_shape == (1, 28, 28) and ds.info().num_classes == 2
    sites = [ds.hospital(i, 5) for i in range(5)]
    assert sum(len(s.train) + len(s.val) for s in sites) == 546
    shares = [np.bincount(s.train.y, minlength=2) / len(s.train) for s in sites]
    assert np.ptp([s[1] for s in shares]) > 0.1  # Dirichlet(0.5) skews label mixes


def test_real_adrenalmnist3d(shared_data):
    path = shared_data / "medmnist" / "adrenalmnist3d.npz"
    if not path.is_file():
        pytest.skip("adrenalmnist3d.npz absent")
    ds = medmnist(path)
    assert ds.info().input_shape == (1, 28, 28, 28)
    assert [len(ds.raw[s].labels) for s in ("train", "val", "test")] == [1188, 98, 298]


# ------------------------------------------------------------------ image folders


def folder_spec(root, **kw) -> DataSpec:
    return DataSpec(dataset="image-folder", data_path=str(root), **kw)


def test_folder_of_png_reads_back_arrays_in_row_major_order(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for cls in ("benign", "malignant"):
        for i in range(6):
            a = rng.integers(0, 255, size=(20, 30)).astype(np.uint8)
            arrays[(cls, i)] = a
            write_png(tmp_path / cls / f"{i}.png", a)
    (tmp_path / "benign" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(folder_spec(tmp_path))
    assert ds.info().class_names == ("benign", "malignant")
    assert ds.info().input_shape == (1, 20, 30)
    split = ds.all_images()
    assert len(split) == 12 and np.bincount(split.y).tolist() == [6, 6]
    np.testing.assert_allclose(split.x[0, 0], arrays[("benign", 0)] / 255.0, atol=1e-6)
    sites = [ds.hospital(i, 2) for i in range(2)]
    assert sum(len(s.train) + len(s.val) for s in sites) + len(ds.server_test()) == 12


def test_folder_of_dicom_and_nifti(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(3):
        write_dicom(tmp_path / "a" / f"{i}.dcm", rng.integers(0, 4000, (24, 24)))
        write_nifti(tmp_path / "b" / f"{i}.nii.gz", rng.random((24, 24, 1)))
    split = ImageFolderDataset(folder_spec(tmp_path)).all_images()
    assert split.x.shape == (6, 1, 24, 24)
    assert split.y.tolist() == [0, 0, 0, 1, 1, 1]
    # 16-bit DICOM and float NIfTI are min-max scaled per image
    assert split.x.min(axis=(1, 2, 3)) == pytest.approx(np.zeros(6), abs=1e-6)
    assert split.x.max(axis=(1, 2, 3)) == pytest.approx(np.ones(6), abs=1e-6)
    resized = ImageFolderDataset(folder_spec(tmp_path, image_size=16)).all_images()
    assert resized.x.shape == (6, 1, 16, 16)


def test_dicom_pixels_match_pydicom(tmp_path):
    pixels = np.arange(24 * 32).reshape(24, 32) % 4000
    image = load_image_file(write_dicom(tmp_path / "x.dcm", pixels))
    assert image.shape == (1, 24, 32)
    np.testing.assert_array_equal(image[0], pixels)


def test_nifti_volume_is_3d(tmp_path):
    volume = np.random.default_rng(2).random((8, 9, 10))
    image = load_image_file(write_nifti(tmp_path / "v.nii", volume))
    assert image.shape == (1, 8, 9, 10)
    np.testing.assert_allclose(image[0], volume, rtol=1e-6)


def test_shared_dicom_files(shared_data):
    folder = shared_data / "dicom"
    if not (folder / "CT_small.dcm").is_file():
        pytest.skip("shared dicom files absent")
    ct = load_image_file(folder / "CT_small.dcm")
    mr = load_image_file(folder / "MR_small.dcm")
    assert ct.shape == (1, 128, 128) and mr.shape == (1, 64, 64)
    assert ct.min() < 0  # rescale slope/intercept applied: Hounsfield units


def test_folder_errors_name_the_file(tmp_path):
    write_png(tmp_path / "a" / "gray.png", np.zeros((8, 8), np.uint8))
    write_png(tmp_path / "b" / "rgb.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(
        DataError, match=r"rgb\.png: 3 channel\(s\) but gray\.png has 1"
    ):
        ImageFolderDataset(folder_spec(tmp_path)).all_images()

    other = tmp_path / "sizes"
    write_png(other / "a" / "small.png", np.zeros((8, 8), np.uint8))
    write_png(other / "b" / "big.png", np.zeros((12, 12), np.uint8))
    with pytest.raises(DataError, match=r"big\.png: size .* set image-size"):
        ImageFolderDataset(folder_spec(other)).all_images()
    assert len(ImageFolderDataset(folder_spec(other, image_size=10)).all_images()) == 2

    corrupt = tmp_path / "corrupt"
    write_png(corrupt / "a" / "ok.png", np.zeros((8, 8), np.uint8))
    (corrupt / "b").mkdir()
    (corrupt / "b" / "broken.dcm").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"broken\.dcm: cannot be read") as err:
        ImageFolderDataset(folder_spec(corrupt)).all_images()
    assert "broken" not in err.value.public_reason


def test_folder_class_names_fix_label_order(tmp_path):
    write_png(tmp_path / "malignant" / "0.png", np.zeros((8, 8), np.uint8))
    write_png(tmp_path / "normal" / "0.png", np.zeros((8, 8), np.uint8))
    names = ("benign", "malignant", "normal")
    ds = ImageFolderDataset(folder_spec(tmp_path, class_names=names))
    assert ds.all_images().y.tolist() == [1, 2] and ds.info().num_classes == 3
    with pytest.raises(DataError, match=r"\['normal'\] are not in class-names"):
        ImageFolderDataset(
            folder_spec(tmp_path, class_names=("benign", "malignant"))
        ).info()
    (tmp_path / "normal" / "0.png").unlink()
    (tmp_path / "normal").rmdir()
    with pytest.raises(DataError, match="need root/<class>/<images>"):
        ImageFolderDataset(folder_spec(tmp_path)).info()


# ------------------------------------------------------------------ synthetic


def test_synthetic_lesions_are_deterministic_and_sites_differ():
    spec = DataSpec(dataset="synthetic-lesions", seed=3)
    a = SyntheticLesionsDataset(spec).hospital(1, 4)
    b = SyntheticLesionsDataset(spec).hospital(1, 4)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert set(np.unique(a.train.y)) == {0, 1}
    other = SyntheticLesionsDataset(spec).hospital(2, 4)
    assert a.train.x.shape[1:] == (1, 32, 32)
    assert not np.array_equal(a.train.x[:5], other.train.x[:5])
    assert Acquisition.of_site(3, 1) != Acquisition.of_site(3, 2)
    assert len(SyntheticLesionsDataset(spec).server_test()) == 240


def test_synthetic_lesions_are_visible_on_average():
    acq = Acquisition(gain=1.0, offset=0.0, noise=0.0, blur=0.0)
    x, y = synthetic_lesion_images(
        200, size=32, prevalence=0.5, acquisition=acq, seed=0
    )
    centre = x[:, 0, 8:24, 8:24].astype(float).max(axis=(1, 2))
    assert centre[y == 1].mean() > centre[y == 0].mean() + 10


def test_config_needs_matching_task_and_path():
    with pytest.raises(ConfigError, match="set task='imaging'"):
        RunConfig(dataset="medmnist", data_path="/x.npz")
    with pytest.raises(ConfigError, match="needs 'data-path'"):
        RunConfig(task="imaging", dataset="medmnist")
    with pytest.raises(ConfigError, match="model='mlp' is a tabular model"):
        RunConfig(task="imaging", dataset="synthetic-lesions", model="mlp")
    assert RunConfig().model_name == "logreg"  # make demo unchanged


# ------------------------------------------------------------------ augmentation


def test_augmentation_is_seeded_per_hospital_and_round():
    x = np.random.default_rng(0).random((40, 1, 16, 16)).astype(np.float32)
    y = np.arange(40) % 2

    def first_batch(hospital_seed, round_seed):
        loader = make_loader(
            ImageSplit(x, y, augment_seed=hospital_seed),
            8,
            shuffle=True,
            seed=round_seed,
        )
        return next(iter(loader))[0]

    assert torch.equal(first_batch(1, 5), first_batch(1, 5))
    assert not torch.equal(first_batch(1, 5), first_batch(2, 5))
    assert not torch.equal(first_batch(1, 5), first_batch(1, 6))
    plain = next(iter(make_loader(ImageSplit(x, y), 8, shuffle=True, seed=5)))[0]
    assert plain.shape == first_batch(1, 5).shape


@pytest.mark.parametrize("dims", [2, 3])
def test_augmentation_without_draws_is_identity(dims):
    x = torch.rand(4, 1, *([8] * dims))
    out, _ = BatchAugment(dims, 0, prob=0.0)(
        [(x[i], torch.tensor(0)) for i in range(4)]
    )
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    moved, _ = BatchAugment(dims, 0, prob=1.0)(
        [(x[i], torch.tensor(0)) for i in range(4)]
    )
    assert moved.shape == x.shape and not torch.allclose(moved, x)
