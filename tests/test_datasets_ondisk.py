"""Full-scale datasets read from $RSBOOK_DATA in their real on-disk formats (CIFAR-10's python
batches, torchvision ImageFolder trees), built here in miniature: pixel values, labels, the
evaluation and training transforms of Cohen et al. 2019 (App. J.2), and every malformed layout."""

import pickle

import numpy as np
import pytest
import torch
from conftest import CLASSES, TEST_SIZE, TRAIN_SIZES, write_image_folder  # noqa: E402  (shared miniatures)
from PIL import Image
from torchvision import transforms

from rsbook.data import input_shape, load_dataset, num_classes


def test_cifar10_pixels_labels_and_shapes(cifar):
    _, train_data, train_labels, test_data, test_labels = cifar
    train, test = load_dataset("cifar10", "train"), load_dataset("cifar10")
    assert len(train) == sum(TRAIN_SIZES) and len(test) == TEST_SIZE
    assert input_shape("cifar10") == (3, 32, 32) and num_classes("cifar10") == 10
    for dataset, data, labels in ((train, train_data, train_labels), (test, test_data, test_labels)):
        assert [dataset[i][1] for i in range(len(dataset))] == labels.tolist()  # batches in order 1..5
        x, _ = dataset[len(dataset) - 1]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        for row, col in ((0, 0), (5, 17), (31, 31)):  # (r, g, b) at a known position: planes of 1024
            rgb = [data[-1, plane * 1024 + row * 32 + col] for plane in range(3)]
            assert x[:, row, col].tolist() == pytest.approx([v / 255 for v in rgb], abs=1e-7)
        assert torch.equal(x, torch.from_numpy(data[-1].reshape(3, 32, 32)).float() / 255)


def test_cifar10_augmentation_changes_train_items_only(cifar):
    plain, augmented = load_dataset("cifar10", "train"), load_dataset("cifar10", "train", augment=True)
    augmentation = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])
    changed = 0
    for i in range(len(plain)):
        torch.manual_seed(i)
        x, label = augmented[i]
        assert label == plain[i][1] and x.shape == (3, 32, 32) and x.dtype == torch.float32
        torch.manual_seed(i)
        assert torch.equal(x, augmentation(plain[i][0]))  # Cohen et al. App. J.2: crop of the 4-padded image, flip
        changed += not torch.equal(x, plain[i][0])
    assert changed >= len(plain) - 2  # the identity has probability 1/162 per draw
    test, test_augmented = load_dataset("cifar10", "test"), load_dataset("cifar10", "test", augment=True)
    for i in range(len(test)):  # evaluation is never augmented
        assert torch.equal(test_augmented[i][0], test[i][0])


def test_cifar10_missing_or_malformed_layout(cifar, tmp_path, monkeypatch):
    folder, *_ = cifar
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("cifar10", "val")
    monkeypatch.delenv("RSBOOK_DATA")
    with pytest.raises(FileNotFoundError, match="RSBOOK_DATA is not set.*cifar-10-batches-py"):
        load_dataset("cifar10")
    monkeypatch.setenv("RSBOOK_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere is not a folder.*cifar-10-batches-py"):
        load_dataset("cifar10")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("RSBOOK_DATA", str(empty))
    with pytest.raises(FileNotFoundError, match=f"folder {empty / 'cifar-10-batches-py'} does not exist.*"
                                                r"data_batch_1\.\.5,test_batch.*python version"):
        load_dataset("cifar10", "train")
    monkeypatch.setenv("RSBOOK_DATA", str(tmp_path))

    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3 does not exist; expected \$RSBOOK_DATA/cifar-10"):
        load_dataset("cifar10", "train")
    assert len(load_dataset("cifar10", "test")) == TEST_SIZE  # the test split needs only test_batch

    rng = np.random.default_rng(1)
    good = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    bad_batches = {
        "lacks b'labels'": {b"data": good},
        "lacks b'data'": {b"labels": [0, 1]},
        r"b'data' is uint8 of shape \(2, 3000\)": {b"data": good[:, :3000], b"labels": [0, 1]},
        r"b'data' is float64": {b"data": good.astype(float), b"labels": [0, 1]},
        r"not 2 ints in 0\.\.9": {b"data": good, b"labels": [0]},
        r"ints in 0\.\.9, one per image": {b"data": good, b"labels": [0, 10]},
        "holds a list, not a dict": [good, [0, 1]],
    }
    for message, batch in bad_batches.items():
        with open(folder / "test_batch", "wb") as out:
            pickle.dump(batch, out, protocol=2)
        with pytest.raises(ValueError, match=f"test_batch.*{message}.*expected"):
            load_dataset("cifar10", "test")
    (folder / "test_batch").write_text("not a pickle")
    with pytest.raises(ValueError, match="test_batch is not a readable pickle"):
        load_dataset("cifar10", "test")




@pytest.fixture(params=["imagenet", "imagenette"])
def image_folder(request, tmp_path, monkeypatch):
    """(dataset name, its root) with train/ and val/ of 3 classes x 2 images under a fresh RSBOOK_DATA."""
    root = tmp_path / request.param
    write_image_folder(root, "train", seed=0)
    write_image_folder(root, "val", seed=1)
    monkeypatch.setenv("RSBOOK_DATA", str(tmp_path))
    return request.param, root


def test_image_folder_labels_shapes_and_transforms(image_folder):
    name, root = image_folder
    assert input_shape(name) == (3, 224, 224) and num_classes(name) == {"imagenet": 1000, "imagenette": 10}[name]
    evaluation = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    training = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor()])
    for split, folder in (("test", "val"), ("val", "val"), ("train", "train")):
        data = load_dataset(name, split)
        assert len(data) == 6 and data.classes == sorted(CLASSES)
        for i, (path, label) in enumerate(data.samples):
            assert path.startswith(str(root / folder / sorted(CLASSES)[label]))
            x, item_label = data[i]
            assert item_label == label and x.shape == (3, 224, 224) and x.dtype == torch.float32
            assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
            assert torch.equal(x, evaluation(Image.open(path).convert("RGB")))  # Resize(256), CenterCrop(224)
        assert [label for _, label in data.samples] == [0, 0, 1, 1, 2, 2]
    augmented = load_dataset(name, "train", augment=True)
    plain = load_dataset(name, "train")
    for i in range(len(augmented)):
        torch.manual_seed(i)
        x, label = augmented[i]
        torch.manual_seed(i)
        assert torch.equal(x, training(Image.open(augmented.samples[i][0]).convert("RGB")))
        assert x.shape == (3, 224, 224) and label == plain[i][1] and not torch.equal(x, plain[i][0])
    test_augmented = load_dataset(name, "test", augment=True)  # evaluation is never augmented
    assert torch.equal(test_augmented[0][0], load_dataset(name, "test")[0][0])


def test_image_folder_missing_or_malformed_layout(image_folder, tmp_path, monkeypatch):
    name, root = image_folder
    layout = rf"expected \$RSBOOK_DATA/{name}/{{train,val}}/<class>/<image>"
    monkeypatch.delenv("RSBOOK_DATA")
    with pytest.raises(FileNotFoundError, match=f"RSBOOK_DATA is not set.*{layout}"):
        load_dataset(name)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("RSBOOK_DATA", str(empty))
    with pytest.raises(FileNotFoundError, match=f"folder {empty / name} does not exist; {layout}"):
        load_dataset(name)
    monkeypatch.setenv("RSBOOK_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset(name, "validation")

    for child in (root / "val").rglob("*.JPEG"):
        child.rename(root / "val" / child.name)  # val/ left flat, as ImageNet's val archive unpacks
    for child in list((root / "val").iterdir()):
        if child.is_dir():
            child.rmdir()
    with pytest.raises(ValueError, match=f"split folder {root / 'val'} has no class folders; {layout}"):
        load_dataset(name, "test")
    for child in (root / "val").iterdir():
        child.unlink()
    (root / "val").rmdir()
    with pytest.raises(FileNotFoundError, match=f"split folder {root / 'val'} does not exist; {layout}"):
        load_dataset(name, "val")

    (root / "train" / "empty_class").mkdir()
    (root / "train" / "empty_class" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"split folder {root / 'train'} is malformed .*empty_class.*{layout}"):
        load_dataset(name, "train")
    (root / "train" / "empty_class" / "notes.txt").unlink()
    (root / "train" / "empty_class").rmdir()
    assert len(load_dataset(name, "train")) == 6


def test_more_class_folders_than_classes(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "imagenette", "val", classes=[f"n{i:02d}" for i in range(11)], per_class=1)
    monkeypatch.setenv("RSBOOK_DATA", str(tmp_path))
    with pytest.raises(ValueError, match="has 11 class folders, more than its 10 classes"):
        load_dataset("imagenette")


def test_input_shapes_of_embedded_datasets():
    assert input_shape("digits") == (1, 8, 8) and input_shape("rancer_toy") == (2,)
    with pytest.raises(ValueError, match="dataset must be one of"):
        input_shape("mnist")
