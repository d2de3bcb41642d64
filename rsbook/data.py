"""Datasets, as (x, label) sequences with x a float32 tensor in [0, 1] pixel space (or raw
coordinates for 2-D toy data), so that noise and radii are measured in input units
(Cohen et al. 2019 add the noise to pixels and standardise inside the model, App. J.2).

Embedded (no download, no RSBOOK_DATA needed):
  digits      scikit-learn's bundled 8x8 digits, shape (1, 8, 8), 10 classes, a fixed seeded split
  rancer_toy  the 236 two-dimensional test points of the RANCER thesis's 2-D pipeline (2 classes),
              fetched from the authors' pinned repository (rsbook.published.fetch)

Full scale, read from $RSBOOK_DATA (rsbook.paths.data_dir) in their usual on-disk layouts; nothing
is ever downloaded:
  cifar10     $RSBOOK_DATA/cifar-10-batches-py/{data_batch_1..5,test_batch}: the CIFAR-10 "python
              version" (pickled dicts, b'data' uint8 (N, 3072) as R, G, B planes of 32x32 row-major,
              b'labels'); shape (3, 32, 32), 10 classes, 50,000 train / 10,000 test images
  imagenet    $RSBOOK_DATA/imagenet/{train,val}/<class>/<image>: torchvision ImageFolder layout (val
              sorted into class folders); shape (3, 224, 224), 1000 classes
  imagenette  $RSBOOK_DATA/imagenette/{train,val}/<class>/<image>: the same layout, 10 classes (the
              "ImageNet-10" of the FaRS paper: 9,469 train / 3,925 val images)

Labels of an ImageFolder dataset are indices into its sorted class-folder names (ImageNet's 1000
WordNet ids give the standard class order). For imagenet and imagenette the split 'test' reads val/.

Augmentation (`augment=True`, split 'train' only; Cohen et al. App. J.2, as in their code base):
CIFAR-10 random 32x32 crop of the image zero-padded by 4 + random horizontal flip; ImageNet and
Imagenette RandomResizedCrop(224) + random horizontal flip. Evaluation transforms are deterministic:
CIFAR-10 none, ImageNet/Imagenette Resize(256) + CenterCrop(224). Random transforms draw from torch's
global generator (seeded by torch.manual_seed, and per worker by a DataLoader's generator).

For checks before a run (rsbook.book.preflight): `layout(name)` states an on-disk dataset's layout,
FULL_SIZES the real datasets' counts, and `survey(name, split)` lists every defect of a split on disk
and counts its examples without decoding an image.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rsbook.paths import data_dir

__all__ = ["ArrayDataset", "CifarDataset", "load_dataset", "num_classes", "input_shape", "DATASETS", "FULL_SIZES",
           "layout", "Survey", "survey"]

DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 0


class ArrayDataset(Dataset):
    """In-memory dataset: x of shape (N, *example_shape) float32, labels of shape (N,) int64."""

    def __init__(self, x, labels):
        self.x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        if len(self.x) != len(self.labels):
            raise ValueError(f"x has {len(self.x)} examples but labels has {len(self.labels)}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.x[index], int(self.labels[index])


def _digits(split: str, augment: bool = False) -> ArrayDataset:
    """The embedded digits; `augment` is ignored (the 8x8 digits are never augmented)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, bunch.target, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=bunch.target
    )
    return ArrayDataset(x_train, y_train) if split == "train" else ArrayDataset(x_test, y_test)


def _rancer_toy(split: str, augment: bool = False) -> ArrayDataset:
    """The authors released only their test points; `augment` is ignored."""
    from rsbook.published import fetch

    points = np.loadtxt(fetch("tarasrumezhak/RANCER/pipeline_2D/data/X_test.out"), delimiter=",", ndmin=2)
    labels = np.loadtxt(fetch("tarasrumezhak/RANCER/pipeline_2D/data/y_test.out"), delimiter=",", ndmin=1)
    if points.shape[1] != 2 or len(points) != len(labels) or not np.all(np.mod(labels, 1) == 0):
        raise ValueError(f"rancer_toy files are malformed: points {points.shape}, labels {labels.shape}")
    return ArrayDataset(points.astype(np.float32), labels.astype(np.int64))


CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_LAYOUT = (
    f"expected $RSBOOK_DATA/{CIFAR10_FOLDER}/{{data_batch_1..5,test_batch}} (the CIFAR-10 python version: "
    "pickled dicts with b'data', uint8 of shape (N, 3072), and b'labels', N ints in 0..9)"
)
CIFAR10_SHAPE = (3, 32, 32)


class CifarDataset(Dataset):
    """CIFAR-10 images held in memory as uint8 and converted per item.

    images: uint8 tensor (N, 3, 32, 32); labels: int64 tensor (N,). dataset[i] is
    (x, label) with x = images[i] / 255 as float32 of shape (3, 32, 32), passed through `transform`
    (a callable on that tensor, e.g. the training augmentation) when one is given.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        if len(images) != len(labels):
            raise ValueError(f"images has {len(images)} examples but labels has {len(labels)}")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = self.images[index].to(torch.float32).div_(255.0)
        return (x if self.transform is None else self.transform(x)), int(self.labels[index])


def _root(name: str, folder: str, layout: str):
    """$RSBOOK_DATA/<folder>, or a FileNotFoundError that states `layout`."""
    try:
        root = data_dir() / folder
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; dataset {name!r} {layout}") from None
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: folder {root} does not exist; {layout}")
    return root


def _read_cifar10_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """_cifar10_batch without the layout in its error messages (survey states the layout once)."""
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch file {path} does not exist")
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except Exception as err:
        raise ValueError(f"CIFAR-10 batch file {path} is not a readable pickle ({err})") from err
    if not isinstance(batch, dict):
        raise ValueError(f"CIFAR-10 batch file {path} holds a {type(batch).__name__}, not a dict")
    missing = [repr(key) for key in (b"data", b"labels") if key not in batch]
    if missing:
        raise ValueError(f"CIFAR-10 batch file {path} lacks {', '.join(missing)}")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"CIFAR-10 batch file {path}: b'data' is {data.dtype} of shape {data.shape}")
    in_range = np.issubdtype(labels.dtype, np.integer) and np.all((labels >= 0) & (labels < num_classes("cifar10")))
    if labels.shape != (len(data),) or not in_range:
        raise ValueError(
            f"CIFAR-10 batch file {path}: b'labels' ({labels.dtype}, shape {labels.shape}) are not "
            f"{len(data)} ints in 0..9, one per image"
        )
    return data, labels.astype(np.int64)


def _cifar10_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (N, 3072), labels int64 (N,)) of one CIFAR-10 batch file. Reading a pickle runs
    code named in it: point RSBOOK_DATA only at files you trust."""
    try:
        return _read_cifar10_batch(path)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{err}; {CIFAR10_LAYOUT}") from err.__cause__


def _cifar10_augmentation():
    """Random 32x32 crop of the image zero-padded by 4 pixels, then a random horizontal flip."""
    from torchvision import transforms

    return transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])


def _cifar10(split: str, augment: bool = False) -> CifarDataset:
    root = _root("cifar10", CIFAR10_FOLDER, CIFAR10_LAYOUT)
    batches = [_cifar10_batch(root / file) for file in CIFAR10_FILES[split]]
    data = np.concatenate([data for data, _ in batches]).reshape(-1, *CIFAR10_SHAPE)
    labels = np.concatenate([labels for _, labels in batches])
    transform = _cifar10_augmentation() if augment else None
    return CifarDataset(torch.from_numpy(data), torch.from_numpy(labels), transform)


IMAGE_FOLDER_SPLITS = {"train": "train", "test": "val", "val": "val"}


def _image_folder_layout(folder: str) -> str:
    return (
        f"expected $RSBOOK_DATA/{folder}/{{train,val}}/<class>/<image> (torchvision ImageFolder layout: "
        "one folder of images per class, val/ sorted into the same class folders)"
    )


def _image_transform(augment: bool):
    """Training: RandomResizedCrop(224) + RandomHorizontalFlip; else Resize(256) + CenterCrop(224).
    Both end in ToTensor (float32 in [0, 1], shape (3, 224, 224))."""
    from torchvision import transforms

    if augment:
        steps = [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(256), transforms.CenterCrop(224)]
    return transforms.Compose([*steps, transforms.ToTensor()])


def _image_folder(name: str, split: str, augment: bool = False):
    """torchvision ImageFolder over $RSBOOK_DATA/<name>/<train or val>, checked before it is scanned."""
    from torchvision.datasets import ImageFolder

    layout = _image_folder_layout(name)
    folder = _root(name, name, layout) / IMAGE_FOLDER_SPLITS[split]
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: split folder {folder} does not exist; {layout}")
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if not classes:
        raise ValueError(f"dataset {name!r}: split folder {folder} has no class folders; {layout}")
    limit = DATASETS[name]["num_classes"]
    if len(classes) > limit:
        raise ValueError(
            f"dataset {name!r}: split folder {folder} has {len(classes)} class folders, more than its {limit} classes; "
            f"{layout}"
        )
    try:
        return ImageFolder(str(folder), transform=_image_transform(augment))
    except FileNotFoundError as err:  # a class folder without images of a known extension
        raise ValueError(f"dataset {name!r}: split folder {folder} is malformed ({err}); {layout}") from None


IMAGE_SHAPE = (3, 224, 224)
DATASETS = {
    "digits": {"loader": _digits, "num_classes": 10, "splits": ("train", "test"), "input_shape": (1, 8, 8)},
    "rancer_toy": {"loader": _rancer_toy, "num_classes": 2, "splits": ("test",), "input_shape": (2,)},
    "cifar10": {"loader": _cifar10, "num_classes": 10, "splits": ("train", "test"), "input_shape": CIFAR10_SHAPE},
    "imagenet": {"loader": partial(_image_folder, "imagenet"), "num_classes": 1000,
                 "splits": tuple(IMAGE_FOLDER_SPLITS), "input_shape": IMAGE_SHAPE},
    "imagenette": {"loader": partial(_image_folder, "imagenette"), "num_classes": 10,
                   "splits": tuple(IMAGE_FOLDER_SPLITS), "input_shape": IMAGE_SHAPE},
}


def _entry(name: str) -> dict:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]


def load_dataset(name: str, split: str = "test", augment: bool = False) -> Dataset:
    """The `split` of dataset `name`, indexable as dataset[i] -> (x, label), x float32 of shape
    input_shape(name), label an int in [0, num_classes(name)).

    Splits: 'train' and 'test' ('test' only for rancer_toy; imagenet and imagenette also take 'val',
    the same as 'test'). `augment` adds the training augmentation to split 'train' of cifar10,
    imagenet and imagenette; it is ignored for other splits and for the embedded datasets.
    Raises ValueError for an unknown name or split, FileNotFoundError or ValueError naming the folder
    or file and the expected layout when on-disk data is missing or malformed.
    """
    entry = _entry(name)
    if split not in entry["splits"]:
        raise ValueError(f"split must be one of {entry['splits']} for dataset {name!r}, got {split!r}")
    return entry["loader"](split, augment=bool(augment) and split == "train")


def num_classes(name: str) -> int:
    """Number of classes of dataset `name`."""
    return _entry(name)["num_classes"]


def input_shape(name: str) -> tuple[int, ...]:
    """Shape of one input x of dataset `name`, e.g. (3, 32, 32) for cifar10."""
    return tuple(_entry(name)["input_shape"])


# ------------------------------------------------------------------ layouts and fast counts (rsbook.book.preflight)

FULL_SIZES = {
    "cifar10": {"train": 50_000, "test": 10_000},
    "imagenet": {"train": None, "test": 50_000},
    "imagenette": {"train": 9_469, "test": 3_925},
}
"""Examples per split of the real on-disk datasets (the keys are the datasets read from $RSBOOK_DATA).
None: not counted by a preflight check (ImageNet's 1,281,167 training images take minutes to list on
network storage); each of its class folders must still hold an image."""


def layout(name: str) -> str:
    """The on-disk layout dataset `name` is read from, as the sentence error messages end with
    ("expected $RSBOOK_DATA/..."). Raises ValueError for an unknown or embedded dataset."""
    _entry(name)
    if name not in FULL_SIZES:
        raise ValueError(f"dataset {name!r} is embedded and has no on-disk layout; on-disk datasets: "
                         f"{sorted(FULL_SIZES)}")
    return CIFAR10_LAYOUT if name == "cifar10" else _image_folder_layout(name)


@dataclass(frozen=True)
class Survey:
    """What `survey` found for one split on disk.

    folder: the split's folder (ImageFolder) or cifar-10-batches-py/, None when RSBOOK_DATA is unusable;
    examples: the number of examples, None when not counted or when a problem prevents a count;
    classes: the sorted class-folder names (ImageFolder), None for CIFAR-10 (its labels are checked
    to lie in 0..9 instead); problems: every defect found, each naming the path (without the layout:
    `layout(dataset)` gives it); empty when load_dataset would find the split well-formed."""

    dataset: str
    split: str
    folder: Path | None
    examples: int | None
    classes: tuple[str, ...] | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _image_count(folder: Path, extensions: tuple[str, ...], stop_at_first: bool) -> int:
    """Files under `folder` (any depth, links followed) with an image extension, as ImageFolder counts
    them; never opened."""
    count = 0
    for _, _, files in os.walk(folder, followlinks=True):
        for file in files:
            if file.lower().endswith(extensions):
                count += 1
                if stop_at_first:
                    return count
    return count


def _list(names, limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def survey(name: str, split: str = "test", count: bool = True) -> Survey:
    """Check split `split` of on-disk dataset `name` under $RSBOOK_DATA without decoding an image, and
    collect every defect instead of stopping at the first.

    CIFAR-10: every batch file of the split is unpickled and checked as load_dataset checks it;
    examples is the total length of their label lists (always counted). ImageFolder (imagenet,
    imagenette): lists the class folders of train/ or val/ and counts, in each, the files with an
    image extension torchvision's ImageFolder accepts (count=False: stops at each folder's first
    image, examples is None). Problems: RSBOOK_DATA unset or not a folder, a missing dataset or split
    folder, a missing or malformed batch file, no class folders, more class folders than the dataset's
    classes, class folders without images. Raises ValueError for an unknown dataset or split, or an
    embedded dataset. Like load_dataset, it unpickles the CIFAR-10 batches, which runs code named in
    them: point RSBOOK_DATA only at files you trust."""
    entry = _entry(name)
    if name not in FULL_SIZES:
        raise ValueError(f"dataset {name!r} is embedded and has nothing on disk to survey; on-disk datasets: "
                         f"{sorted(FULL_SIZES)}")
    if split not in entry["splits"]:
        raise ValueError(f"split must be one of {entry['splits']} for dataset {name!r}, got {split!r}")
    folder_name = CIFAR10_FOLDER if name == "cifar10" else name
    try:
        root = data_dir() / folder_name
    except FileNotFoundError as err:
        return Survey(name, split, None, None, None, (str(err),))
    if not root.is_dir():
        return Survey(name, split, root, None, None, (f"folder {root} does not exist",))
    if name == "cifar10":
        problems, examples = [], 0
        for file in CIFAR10_FILES[split]:
            try:
                examples += len(_read_cifar10_batch(root / file)[1])
            except (FileNotFoundError, ValueError) as err:
                problems.append(str(err))
        return Survey(name, split, root, None if problems else examples, None, tuple(problems))
    folder = root / IMAGE_FOLDER_SPLITS[split]
    if not folder.is_dir():
        return Survey(name, split, folder, None, None, (f"split folder {folder} does not exist",))
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = tuple(sorted(item.name for item in os.scandir(folder) if item.is_dir()))
    problems = []
    if not classes:
        problems.append(f"split folder {folder} has no class folders")
    limit = DATASETS[name]["num_classes"]
    if len(classes) > limit:
        problems.append(f"split folder {folder} has {len(classes)} class folders, more than its {limit} classes")
    counts = {c: _image_count(folder / c, IMG_EXTENSIONS, stop_at_first=not count) for c in classes}
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        problems.append(f"split folder {folder}: {len(empty)} class folder(s) hold no image file "
                        f"({', '.join(IMG_EXTENSIONS)}): {_list(empty)}")
    examples = sum(counts.values()) if count and not problems else None
    return Survey(name, split, folder, examples, classes, tuple(problems))
