"""Character corpora as next-character streams: Penn Treebank's ptb.char files, or any UTF-8 text.

ptb.char files hold space-separated characters, `_` between words, one sentence
per line; a line end is a character of its own. The text comes from Mikolov's
simple-examples.tgz; no checksum of that archive is pinned here, so sgrad
downloads it only when given one. `load_text_corpus` reads any UTF-8 file or
folder (text8, enwik8, Shakespeare, a user's own) and splits it by fraction.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

from sgrad.data.download import RemoteFile, fetch, search_dirs
from sgrad.data.errors import DatasetError
from sgrad.data.copy import StreamChunk

SPLITS = ("train", "valid", "test")
SOURCE = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
EOL = "\n"


def _tokens(path: Path) -> list[str]:
    out: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        out.extend(line.split())
        out.append(EOL)
    return out


def _read(folder: Path) -> dict[str, np.ndarray]:
    tokens = {s: _tokens(folder / f"ptb.char.{s}.txt") for s in SPLITS}
    vocab = sorted(set(tokens["train"]))
    index = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(tokens["valid"] + tokens["test"]) - set(vocab))
    if unknown or not tokens["train"]:
        raise DatasetError(f"{folder}: valid/test use characters absent from train ({unknown[:5]}) or "
                           "train is empty; are these the ptb.char files?")
    out = {s: np.array([index[c] for c in tokens[s]], np.int32) for s in SPLITS}
    out["vocab"] = np.array(vocab)
    return out


def _complete(folder: Path) -> bool:
    return all((folder / f"ptb.char.{s}.txt").is_file() for s in SPLITS)


def _extract(archive: Path, folder: Path) -> None:
    """Copy the three ptb.char files out of simple-examples.tgz (nothing else, whatever paths it holds)."""
    with tarfile.open(archive) as tar:
        for split in SPLITS:
            name = f"ptb.char.{split}.txt"
            member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith("data/" + name)), None)
            if member is None:
                raise DatasetError(f"{archive} has no data/{name}; is it simple-examples.tgz?")
            (folder / name).write_bytes(tar.extractfile(member).read())


def load_char_corpus(directory: str | None = None, download: bool = True, checksum: str | None = None,
                     url: str | None = None, progress: bool = True) -> dict[str, np.ndarray]:
    """{'train','valid','test': int32 ids, 'vocab': array of characters}; fetched only with a checksum."""
    dirs = search_dirs("ptb_char", directory)
    for folder in dirs:
        if _complete(folder):
            return _read(folder)
    looked = ", ".join(str(d) for d in dirs)
    manual = (f"Get {SOURCE}, extract it, and set dataset.dir=<that>/simple-examples/data")
    if not download:
        raise DatasetError(f"Penn Treebank characters not found (looked for ptb.char.train/valid/test.txt in "
                           f"{looked}) and downloading is off. {manual}")
    if not checksum:
        raise DatasetError(f"Penn Treebank characters not found (looked for ptb.char.train/valid/test.txt in "
                           f"{looked}). sgrad has no pinned checksum for {SOURCE}: pass "
                           f"dataset.checksum=sha256:<hex of the archive> to let it download and verify, or: {manual}")
    target = dirs[0]
    remote = RemoteFile("simple-examples.tgz", tuple(u for u in (url, SOURCE) if u), checksum)
    try:
        archive = fetch(remote, target, progress)
    except DatasetError as e:
        raise DatasetError(f"Penn Treebank characters not found in {looked} and {e}. {manual}") from None
    _extract(archive, target)
    return _read(target)


UNKNOWN = "\ufffd"  # stands for characters of valid/test that train never shows


def _text_files(root: Path) -> list[Path]:
    """The regular files under `root` (one file, or a folder walked in sorted order; links to files already
    taken are skipped, so a folder with `x.u8 -> x` aliases is read once)."""
    if root.is_file():
        return [root]
    seen, files = set(), []
    for path in sorted(root.rglob("*")):
        real = path.resolve()
        if real.is_file() and real not in seen:
            seen.add(real)
            files.append(path)
    return files


def load_text_corpus(path: str | None, valid_fraction: float = 0.05, test_fraction: float = 0.05
                     ) -> dict[str, np.ndarray]:
    """Any UTF-8 text file or folder as {'train','valid','test': int32 ids, 'vocab'}, split by fraction.

    Files are joined in sorted order; files that are not UTF-8 text (binary
    indexes, archives) are skipped. The split is contiguous: the last
    `test_fraction` of the characters is test, the `valid_fraction` before it
    valid, so no sentence is shared between splits except at the two cuts.
    The vocabulary is the training split's plus one unknown symbol.
    """
    if not path:
        raise DatasetError("dataset=text needs dataset.dir=<a UTF-8 text file or a folder of them>")
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"dataset.dir={path}: no such file or folder (dataset=text reads any UTF-8 text file "
                           "or folder, e.g. Debian's fortunes: apt-get install fortunes; dataset.dir="
                           "/usr/share/games/fortunes)")
    parts, skipped = [], []
    for f in _text_files(root):
        data = f.read_bytes()
        try:
            if b"\0" in data:
                raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
            parts.append(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            skipped.append((f, e.start))
    if not parts and skipped:
        f, at = skipped[0]
        raise DatasetError(f"dataset.dir={path}: {f} is not UTF-8 text (byte {at} is not: a binary or other-encoded "
                           f"file{f' and {len(skipped) - 1} more like it' if len(skipped) > 1 else ''}); dataset=text "
                           "reads UTF-8 text files")
    text = "".join(parts)
    n = len(text)
    n_test, n_valid = int(n * test_fraction), int(n * valid_fraction)
    n_train = n - n_test - n_valid
    if not parts or min(n_train, n_valid, n_test) < 2:
        raise DatasetError(f"dataset.dir={path}: found {len(parts)} UTF-8 text file(s) with {n} characters in all, "
                           f"too few to split into train/valid/test by dataset.valid_fraction={valid_fraction} "
                           f"and dataset.test_fraction={test_fraction}")
    splits = {"train": text[:n_train], "valid": text[n_train:n_train + n_valid], "test": text[n_train + n_valid:]}
    vocab = sorted(set(splits["train"])) + [UNKNOWN]
    table = np.full(max(map(ord, text)) + 1, len(vocab) - 1, np.int32)
    table[[ord(c) for c in vocab[:-1]]] = np.arange(len(vocab) - 1)
    out = {s: table[np.frombuffer(t.encode("utf-32-le"), np.uint32)] for s, t in splits.items()}
    out["vocab"] = np.array(vocab)
    return out


def load_corpus(name: str, directory: str | None, download: bool = True, checksum: str | None = None,
                url: str | None = None, valid_fraction: float = 0.05, test_fraction: float = 0.05,
                progress: bool = True) -> dict[str, np.ndarray]:
    """The corpus of `dataset=text` (any UTF-8 text, split by fraction) or `dataset=ptb_char`."""
    if name == "text":
        return load_text_corpus(directory, valid_fraction, test_fraction)
    return load_char_corpus(directory, download, checksum, url, progress=progress)


def token_windows(ids: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive, non-overlapping windows of a split as examples for a model that sees a whole window at once:
    tokens [N, window] and the next token at each position [N, window] (int32)."""
    n = (len(ids) - 1) // window
    if n < 1:
        raise DatasetError(f"a split of {len(ids)} characters is too short for one window of {window} (model.context)")
    x = ids[:n * window].reshape(n, window)
    y = ids[1:n * window + 1].reshape(n, window)
    return x.astype(np.int32), y.astype(np.int32)


class TextStream:
    """The training text cut into `batch` rows read in windows of `window` characters, next char as target."""

    def __init__(self, corpus: dict[str, np.ndarray], batch: int, window: int):
        self.corpus, self.batch, self.window = corpus, batch, window
        self.vocab = len(corpus["vocab"])
        self.rows = self._rows(corpus["train"], batch)
        if self.rows.shape[1] <= window:
            raise DatasetError(f"the training text is too short for trainer.batch_size={batch} rows of "
                               f"trainer.bptt={window} characters")
        self.windows_per_epoch = (self.rows.shape[1] - 1) // window

    @property
    def input_dim(self) -> int:
        return self.vocab

    @property
    def output_dim(self) -> int:
        return self.vocab

    @staticmethod
    def _rows(ids: np.ndarray, batch: int) -> np.ndarray:
        per_row = len(ids) // batch
        return ids[:per_row * batch].reshape(batch, per_row)

    def _windows(self, rows: np.ndarray, first: int, count: int, per_epoch: int, window: int) -> StreamChunk:
        xs, ys, resets = [], [], []
        for w in range(first, first + count):
            pos = (w % per_epoch) * window
            xs.append(rows[:, pos:pos + window])
            ys.append(rows[:, pos + 1:pos + 1 + window])
            # The text restarts at each epoch: so does the state.
            resets.append(np.full(xs[-1].shape, 0.0, np.float32))
            resets[-1][:, 0] = float(w % per_epoch == 0)
        x = np.eye(self.vocab, dtype=np.float32)[np.stack(xs)]
        y = np.stack(ys).astype(np.float32)
        return StreamChunk(x, y, np.ones(y.shape, np.float32), np.stack(resets))

    def chunk(self, start: int, steps: int) -> StreamChunk:
        """Windows start..start+steps-1 of the training stream (wrapping at the epoch end)."""
        return self._windows(self.rows, start, steps, self.windows_per_epoch, self.window)

    def eval_windows(self, split: str, rows: int = 16, window: int = 100):
        """The split as consecutive windows [W, rows, window, ...] for a carried-state evaluation (the tail that
        does not fill a window is left out)."""
        data = self._rows(self.corpus[split], rows)
        window = min(window, data.shape[1] - 1)
        if window < 1:
            raise DatasetError(f"the {split} text is too short for {rows} evaluation rows")
        count = (data.shape[1] - 1) // window
        c = self._windows(data, 0, count, count, window)
        return c.x, c.y, c.mask, c.resets
