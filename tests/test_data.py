"""Readers, checksummed downloads (file:// URLs, never the network) and the errors a user sees."""

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import FASHION_DIR, write_idx_dataset
from sgrad.data import DatasetError, load_dataset
from sgrad.data import datasets as ds
from sgrad.data.cifar import read_batch
from sgrad.data.download import RemoteFile, fetch
from sgrad.data.idx import read_idx, write_idx


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, name, dtype):
    arr = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    write_idx(tmp_path / name, arr)
    back = read_idx(tmp_path / name)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_idx_header_is_the_mnist_magic(tmp_path):
    write_idx(tmp_path / "x", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "y", np.zeros((4,), np.uint8))
    assert (tmp_path / "x").read_bytes()[:4] == (2051).to_bytes(4, "big")
    assert (tmp_path / "y").read_bytes()[:4] == (2049).to_bytes(4, "big")


def test_truncated_idx_file_is_named(tmp_path):
    write_idx(tmp_path / "imgs", np.zeros((10, 4, 4), np.uint8))
    raw = (tmp_path / "imgs").read_bytes()
    (tmp_path / "imgs").write_bytes(raw[:-7])
    with pytest.raises(DatasetError, match=r"imgs.*truncated or corrupt"):
        read_idx(tmp_path / "imgs")


def test_damaged_idx_header_is_named_with_a_sane_byte_count(tmp_path):
    write_idx(tmp_path / "imgs", np.zeros((10, 4, 4), np.uint8))
    raw = bytearray((tmp_path / "imgs").read_bytes())
    raw[4:8] = b"\xff\xff\xff\xff"  # the first dimension's header field destroyed
    (tmp_path / "imgs").write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=r"imgs: IDX header promises shape \(4294967295, 4, 4\) "
                                           r"\(68719476736 bytes\) but the file holds 176 bytes"):
        read_idx(tmp_path / "imgs")


def test_a_folder_missing_one_idx_file_names_that_file(idx_dir, tmp_path):
    import shutil
    folder = tmp_path / "three"
    shutil.copytree(idx_dir, folder)
    victim = next(p for p in folder.iterdir() if p.name.startswith("t10k-labels"))
    victim.unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("idx", str(folder), download=False)
    msg = str(err.value)
    assert f"{folder} lacks t10k-labels-idx1-ubyte[.gz]" in msg and "train-images" not in msg.split("lacks")[1].split(".")[0]


def test_bad_magic_and_broken_gzip_are_named(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DatasetError, match="junk: not an IDX file"):
        read_idx(tmp_path / "junk")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="bad.gz: cannot read IDX"):
        read_idx(tmp_path / "bad.gz")


def test_idx_dataset_loads_with_shapes_and_stats(idx_dir):
    data = load_dataset("idx", str(idx_dir))
    assert data.train_x.shape == (1024, 8, 8, 1) and data.train_x.dtype == np.uint8
    assert data.test_y.shape == (512,) and data.test_y.dtype == np.int32
    assert data.input_shape == (8, 8, 1)
    assert data.mean.shape == (1,) and 0 < data.std[0] < 1


def test_corrupt_file_in_a_dataset_dir_is_named(tmp_path):
    folder = write_idx_dataset(tmp_path / "d", gz=False)
    p = folder / "t10k-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_dataset("idx", str(folder))


def test_label_image_count_mismatch(tmp_path):
    folder = write_idx_dataset(tmp_path / "d")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros((5,), np.uint8))
    with pytest.raises(DatasetError, match="do not match 1024 images"):
        load_dataset("idx", str(folder))


def test_known_dataset_with_wrong_counts_is_rejected(tmp_path):
    folder = write_idx_dataset(tmp_path / "mnist")  # MNIST names, but not 60000/10000 examples
    with pytest.raises(DatasetError, match="expected 60000 / 10000"):
        load_dataset("mnist", str(folder))


def test_missing_dataset_offline_names_dir_and_files(tmp_path, monkeypatch):
    # An unreachable mirror (a file URL that does not exist) stands in for being offline.
    gone = tmp_path / "no-mirror"
    monkeypatch.setattr(ds, "SPECS", {**ds.SPECS, "mnist": ds.DatasetSpec(
        "mnist", "idx", tuple(RemoteFile(r.name, ((gone / r.name).as_uri(),), r.checksum)
                              for r in ds.SPECS["mnist"].remotes), counts=(60000, 10000), how_to_get="somewhere")})
    target = tmp_path / "empty"
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", str(target), progress=False)
    msg = str(err.value)
    assert str(target) in msg and "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg
    assert "download failed" in msg
    with pytest.raises(DatasetError, match="downloading is off"):
        load_dataset("mnist", str(target), download=False)


def _file_url_spec(src: Path, checksums: dict[str, str]) -> ds.DatasetSpec:
    remotes = tuple(RemoteFile(f + ".gz", (src.joinpath(f + ".gz").as_uri(),), checksums[f]) for f in ds.IDX_FILES)
    return ds.DatasetSpec("mnist", "idx", remotes, counts=None, how_to_get="from the test")


def test_download_verifies_checksums_and_is_reused(tmp_path, monkeypatch):
    src = write_idx_dataset(tmp_path / "mirror")
    sums = {f: "sha256:" + hashlib.sha256((src / (f + ".gz")).read_bytes()).hexdigest() for f in ds.IDX_FILES}
    monkeypatch.setattr(ds, "SPECS", {**ds.SPECS, "mnist": _file_url_spec(src, sums)})
    data = load_dataset("mnist", progress=False)  # default cache: $SGRAD_DATA/mnist
    cache = Path(os.environ["SGRAD_DATA"]) / "mnist"
    assert data.source == str(cache) and len(data.train_y) == 1024
    # The second run reads the cache: the mirror may disappear.
    for f in src.iterdir():
        f.unlink()
    assert len(load_dataset("mnist", progress=False).test_y) == 512


def test_checksum_mismatch_discards_the_download(tmp_path, monkeypatch):
    src = write_idx_dataset(tmp_path / "mirror")
    sums = {f: "sha256:" + "0" * 64 for f in ds.IDX_FILES}
    monkeypatch.setattr(ds, "SPECS", {**ds.SPECS, "mnist": _file_url_spec(src, sums)})
    dest = tmp_path / "cache"
    with pytest.raises(DatasetError, match="checksum mismatch for train-images-idx3-ubyte.gz"):
        load_dataset("mnist", str(dest), progress=False)
    assert not any(dest.iterdir())


def test_fetch_tries_mirrors_in_order(tmp_path):
    payload = b"payload"
    (tmp_path / "f.bin").write_bytes(payload)
    remote = RemoteFile("f.bin", ((tmp_path / "missing.bin").as_uri(), (tmp_path / "f.bin").as_uri()),
                        "md5:" + hashlib.md5(payload).hexdigest())
    out = fetch(remote, tmp_path / "dl", progress=False)
    assert out.read_bytes() == payload


def _write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": list(rng.integers(0, 10, n).tolist()), b"batch_label": b"test"}
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    return batch


def test_cifar_batches_are_read_channels_last(tmp_path):
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [_write_cifar_batch(folder / f"data_batch_{i}", 20, i) for i in range(1, 6)]
    _write_cifar_batch(folder / "test_batch", 10, 9)
    x, y = read_batch(folder / "data_batch_1")
    assert x.shape == (20, 32, 32, 3)
    # Pixel (row 0, col 1) of the red plane is element 1 of the stored row.
    assert x[0, 0, 1, 0] == batches[0][b"data"][0, 1] and x[0, 0, 0, 2] == batches[0][b"data"][0, 2048]
    spec = ds.DatasetSpec("cifar10", "cifar")
    data = ds._load_from(spec, tmp_path / "cifar", 10)
    assert data.train_x.shape == (100, 32, 32, 3) and data.test_y.shape == (10,)
    assert data.mean.shape == (3,)


def test_corrupt_cifar_batch_is_named(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="data_batch_1: not a CIFAR-10 python batch"):
        read_batch(tmp_path / "data_batch_1")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian():
    data = load_dataset("fashion_mnist", download=False, progress=False)
    assert data.source == FASHION_DIR
    assert data.train_x.shape == (60000, 28, 28, 1) and data.test_x.shape == (10000, 28, 28, 1)
    assert np.bincount(data.train_y).tolist() == [6000] * 10


def test_any_text_folder_splits_by_fraction_and_skips_binary_files(tmp_path):
    from sgrad.data.errors import DatasetError
    from sgrad.data.text import UNKNOWN, load_text_corpus
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text("héllo world\n" * 80, encoding="utf-8")
    (folder / "b.txt").write_text("thé end\n" * 20 + "zq", encoding="utf-8")
    (folder / "a.txt.dat").write_bytes(b"\x00\x01\xff binary index")
    (folder / "alias").symlink_to(folder / "a.txt")  # read once, like fortunes' x.u8 -> x
    corpus = load_text_corpus(str(folder), valid_fraction=0.1, test_fraction=0.1)
    n = 12 * 80 + 8 * 20 + 2
    assert sum(len(corpus[s]) for s in ("train", "valid", "test")) == n
    assert len(corpus["test"]) == int(n * 0.1) == len(corpus["valid"])
    vocab = list(corpus["vocab"])
    assert vocab[-1] == UNKNOWN and "é" in vocab
    decode = lambda ids: "".join(vocab[i] for i in ids)
    assert decode(corpus["train"]).startswith("héllo world\n")
    # "zq" appears only in the test split: both map to the unknown symbol.
    assert decode(corpus["test"]).endswith(UNKNOWN * 2)
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_text_corpus(str(tmp_path / "missing"))
    (tmp_path / "tiny.txt").write_text("ab")
    with pytest.raises(DatasetError, match="too few to split"):
        load_text_corpus(str(tmp_path / "tiny.txt"))
    # A binary file given as the text says so, and which byte is not UTF-8.
    (tmp_path / "model.bin").write_bytes(b"PK\x03\x04\xff\xfe" * 100)
    with pytest.raises(DatasetError, match=r"model.bin is not UTF-8 text \(byte 4 is not"):
        load_text_corpus(str(tmp_path / "model.bin"))
