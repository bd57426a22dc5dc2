"""The one place that resolves data paths: known datasets, where their files live, and the loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sgrad.data import cifar, idx
from sgrad.data.download import RemoteFile, fetch, search_dirs
from sgrad.data.errors import DatasetError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_remotes(bases: tuple[str, ...], checksums: tuple[str, ...]) -> tuple[RemoteFile, ...]:
    return tuple(RemoteFile(f + ".gz", tuple(b + f + ".gz" for b in bases), c)
                 for f, c in zip(IDX_FILES, checksums))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str                                   # "idx" or "cifar"
    remotes: tuple[RemoteFile, ...] = ()
    system_dirs: tuple[str, ...] = ()           # read-only places a distribution may have put the files
    counts: tuple[int, int] | None = None       # expected (train, test) examples
    how_to_get: str = ""


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", "idx",
        _idx_remotes(
            ("https://storage.googleapis.com/cvdf-datasets/mnist/",
             "https://ossci-datasets.s3.amazonaws.com/mnist/"),
            ("sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
             "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
             "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
             "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")),
        counts=(60000, 10000),
        how_to_get="from https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", "idx",
        _idx_remotes(
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
            ("sha256:3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
             "sha256:a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
             "sha256:346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
             "sha256:67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        counts=(60000, 10000),
        how_to_get="with `apt-get install dataset-fashion-mnist` (Debian), or from "
                   "https://github.com/zalandoresearch/fashion-mnist"),
    "kmnist": DatasetSpec(
        "kmnist", "idx",
        # The publisher (CODH) lists only MD5 sums for these files.
        _idx_remotes(
            ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            ("md5:bdb82020997e1d708af4cf47b453dcf7", "md5:e144d726b3acfaa3e44228e80efcd344",
             "md5:5c965bf0a639b31b8f53240b1b52f4d7", "md5:7320c461ea6c1c855c0b718fb2a4b134")),
        counts=(60000, 10000),
        how_to_get="from http://codh.rois.ac.jp/kmnist/ (MNIST format)"),
    "cifar10": DatasetSpec(
        "cifar10", "cifar",
        (RemoteFile(cifar.ARCHIVE, ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                    "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
        counts=(50000, 10000),
        how_to_get="from https://www.cs.toronto.edu/~kriz/cifar.html (python version)"),
    "idx": DatasetSpec("idx", "idx", how_to_get="in MNIST format (IDX, optionally gzipped)"),
}


@dataclass
class Dataset:
    name: str
    train_x: np.ndarray      # uint8 [N, H, W, C]
    train_y: np.ndarray      # int32 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    source: str              # the folder the files came from
    mean: np.ndarray = field(default=None)   # per-channel pixel mean/std of the training set, in [0, 1]
    std: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.mean is None:
            pixels = self.train_x.reshape(-1, self.train_x.shape[-1]).astype(np.float64) / 255.0
            self.mean = pixels.mean(0).astype(np.float32)
            self.std = np.maximum(pixels.std(0), 1e-3).astype(np.float32)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


def _required(spec: DatasetSpec) -> list[str]:
    return [cifar.FOLDER] if spec.kind == "cifar" else list(IDX_FILES)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(spec: DatasetSpec, folder: Path) -> bool:
    if spec.kind == "cifar":
        return (folder / cifar.FOLDER).is_dir() or (folder / cifar.ARCHIVE).is_file()
    return all(_find_idx(folder, f) for f in IDX_FILES)


def _missing_in(spec: DatasetSpec, folder: Path) -> list[str]:
    """The required files `folder` lacks (all of them when it does not exist)."""
    if spec.kind == "cifar":
        return [] if _complete(spec, folder) else [f"{cifar.FOLDER}/ or {cifar.ARCHIVE}"]
    return [f"{f}[.gz]" for f in IDX_FILES if not _find_idx(folder, f)]


def _missing_message(spec: DatasetSpec, dirs: list[Path], why: str) -> str:
    files = ", ".join(r.name for r in spec.remotes) if spec.remotes else ", ".join(
        f"{f}[.gz]" for f in _required(spec))
    # A folder that holds some of the files: name exactly what it lacks.
    partial = [(d, _missing_in(spec, d)) for d in dirs if d.is_dir() and len(_missing_in(spec, d)) < len(_required(spec))]
    if partial:
        folder, lacking = partial[0]
        return (f"dataset {spec.name}: {folder} lacks {', '.join(lacking)}{why}. Put the missing file(s) there "
                f"(get them {spec.how_to_get}), or point dataset.dir=PATH at a folder that has all of {files}.")
    looked = ", ".join(str(d) for d in dirs)
    return (f"dataset {spec.name}: files not found in {looked}{why}. Place {files} in {dirs[0]} "
            f"(get them {spec.how_to_get}), or point dataset.dir=PATH at a folder that has them.")


def _read_idx_split(folder: Path, images: str, labels: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path = _find_idx(folder, images), _find_idx(folder, labels)
    x, y = idx.read_idx(x_path), idx.read_idx(y_path)
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DatasetError(f"{x_path}: expected uint8 images of rank 3 or 4, got {x.dtype} {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DatasetError(f"{y_path}: {y.shape} labels do not match {len(x)} images in {x_path}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"{y_path}: labels outside 0..{num_classes - 1} (dataset.num_classes={num_classes})")
    x = x[..., None] if x.ndim == 3 else x
    return x, y.astype(np.int32)


def _load_from(spec: DatasetSpec, folder: Path, num_classes: int) -> Dataset:
    if spec.kind == "cifar":
        if not (folder / cifar.FOLDER).is_dir():
            cifar.extract(folder / cifar.ARCHIVE, folder)
        batches = folder / cifar.FOLDER
        train = cifar.read_split(batches, cifar.TRAIN_BATCHES)
        test = cifar.read_split(batches, cifar.TEST_BATCHES)
    else:
        train = _read_idx_split(folder, IDX_FILES[0], IDX_FILES[1], num_classes)
        test = _read_idx_split(folder, IDX_FILES[2], IDX_FILES[3], num_classes)
    if spec.counts and (len(train[1]), len(test[1])) != spec.counts:
        raise DatasetError(
            f"dataset {spec.name} in {folder}: found {len(train[1])} train / {len(test[1])} test examples, "
            f"expected {spec.counts[0]} / {spec.counts[1]}; the files are incomplete or not {spec.name}")
    return Dataset(spec.name, train[0], train[1], test[0], test[1], num_classes, str(folder))


def load_dataset(name: str, directory: str | None = None, download: bool = True,
                 num_classes: int = 10, progress: bool = True) -> Dataset:
    """Find (or download and verify) the dataset's files and read them, checking every format."""
    if name not in SPECS:
        raise DatasetError(f"dataset.name={name!r}: allowed values are {', '.join(SPECS)}")
    spec = SPECS[name]
    if name == "idx" and not directory:
        raise DatasetError("dataset=idx needs dataset.dir=PATH, a folder with " + ", ".join(IDX_FILES))
    dirs = search_dirs(spec.name, directory, spec.system_dirs)
    for folder in dirs:
        if _complete(spec, folder):
            return _load_from(spec, folder, num_classes)
    if not download or not spec.remotes:
        return _raise_missing(spec, dirs, " and downloading is off (dataset.download=false)"
                              if spec.remotes else "")
    target = dirs[0]
    try:
        for remote in spec.remotes:
            if not (target / remote.name).is_file():
                fetch(remote, target, progress)
    except DatasetError as e:
        if "checksum mismatch" in str(e):
            raise
        return _raise_missing(spec, dirs, f", and the download failed ({e})")
    return _load_from(spec, target, num_classes)


def _raise_missing(spec: DatasetSpec, dirs: list[Path], why: str):
    raise DatasetError(_missing_message(spec, dirs, why))
