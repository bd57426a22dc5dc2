"""Fetch a file once into the cache dir, verifying its checksum before it is used."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sgrad.data.errors import DatasetError


def search_dirs(name: str, configured: str | None, system_dirs=()) -> list[Path]:
    """Where a dataset's files are looked for, in order; the first is where downloads go: `dataset.dir` if set,
    else $SGRAD_DATA/<name> or ~/.cache/sgrad/<name>, then the system's own copies (e.g. a Debian package)."""
    if configured:
        return [Path(configured).expanduser()]
    root = os.environ.get("SGRAD_DATA")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "sgrad"
    return [base / name] + [Path(d) for d in system_dirs]


@dataclass(frozen=True)
class RemoteFile:
    name: str
    urls: tuple[str, ...]      # mirrors, tried in order
    checksum: str              # "sha256:<hex>" (or "md5:<hex>" where the publisher gives only that)


def digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(remote: RemoteFile, folder: Path, progress: bool = True) -> Path:
    """Download `remote` into `folder` (any URL urllib opens, file:// included) and verify it."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / remote.name
    part = folder / (remote.name + ".part")
    algorithm, expected = remote.checksum.split(":", 1)
    errors = []
    for url in remote.urls:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as out:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=remote.name,
                          disable=not progress, leave=False) as bar:
                    while block := r.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {e}")
            part.unlink(missing_ok=True)
            continue
        got = digest(part, algorithm)
        if got != expected:
            part.unlink(missing_ok=True)
            raise DatasetError(
                f"checksum mismatch for {remote.name} from {url}: expected {algorithm} {expected}, got {got}; "
                "the download was discarded")
        shutil.move(part, dest)
        return dest
    raise DatasetError(f"could not download {remote.name}: " + "; ".join(errors))
