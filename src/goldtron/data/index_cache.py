"""Caching of dataset index arrays under `--data-cache-path`, built once by one rank.

Files of one cache entry, `<hash>` being the md5 of the entry's description (data, split,
seq length, seed, sample count), so any change to those makes a new entry:

    <hash>-<name>-<array>.npy        one per index array
    <hash>-<name>-description.json   the description plus each array's sha256, written last

The description file is the completeness marker: arrays without it are an unfinished build.
Files are written under temporary names and renamed, so a reader never sees half a file.
The builder rank rebuilds an entry it finds corrupt; any other rank names it in an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from goldtron.data.errors import DataError

CACHE_FORMAT_VERSION = 1


class CorruptCacheError(DataError):
    """A cache entry exists but does not match its description."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, write: Callable[[object], None]) -> None:
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            write(handle)
        # Temporary files are private (0600); other users' ranks must be able to read the cache.
        os.chmod(handle.name, 0o644)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


class IndexCache:
    """One cache entry: a named set of arrays tied to a description."""

    def __init__(self, directory: str | os.PathLike, name: str, description: dict):
        self.directory = Path(directory)
        self.name = name
        self.description = {"cache_format": CACHE_FORMAT_VERSION, "name": name, **description}
        key = hashlib.md5(json.dumps(self.description, sort_keys=True).encode()).hexdigest()
        self.stem = f"{key}-{name}"

    @property
    def description_path(self) -> Path:
        return self.directory / f"{self.stem}-description.json"

    def array_path(self, array: str) -> Path:
        return self.directory / f"{self.stem}-{array}.npy"

    def load(self) -> dict[str, np.ndarray] | None:
        """The cached arrays; None when the entry was never finished; CorruptCacheError when broken."""
        if not self.description_path.is_file():
            return None
        try:
            stored = json.loads(self.description_path.read_text())
            checksums = stored.pop("sha256")
        except (ValueError, KeyError) as error:
            raise CorruptCacheError(f"{self.description_path}: unreadable cache description ({error})") from error
        if stored != self.description:
            raise CorruptCacheError(f"{self.description_path}: describes other data than asked for")
        arrays = {}
        for array, checksum in checksums.items():
            path = self.array_path(array)
            if not path.is_file() or _sha256(path) != checksum:
                raise CorruptCacheError(f"{path}: missing or its checksum does not match {self.description_path.name}")
            arrays[array] = np.load(path, allow_pickle=False)
        return arrays

    def save(self, arrays: dict[str, np.ndarray]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            checksums = {}
            for array, values in arrays.items():
                path = self.array_path(array)
                _write_atomically(path, lambda handle: np.save(handle, values, allow_pickle=False))
                checksums[array] = _sha256(path)
            text = json.dumps({**self.description, "sha256": checksums}, indent=1, sort_keys=True)
            _write_atomically(self.description_path, lambda handle: handle.write(text.encode()))
        except OSError as error:
            raise DataError(
                f"{self.directory}: cannot write the dataset index cache ({error}); "
                f"point --data-cache-path at a writable folder shared by all ranks"
            ) from error


def load_or_build(cache: IndexCache | None, build: Callable[[], dict[str, np.ndarray]], is_builder_rank: bool) -> dict[str, np.ndarray]:
    """The builder rank loads or (re)builds and saves; the others only load, after the barrier."""
    if cache is None:
        return build()
    if is_builder_rank:
        try:
            arrays = cache.load()
        except CorruptCacheError as error:
            print(f"goldtron data: rebuilding a corrupt index cache: {error}", file=sys.stderr)
            arrays = None
        if arrays is None:
            arrays = build()
            cache.save(arrays)
        return arrays
    arrays = cache.load()
    if arrays is None:
        raise DataError(
            f"{cache.description_path}: missing after the builder rank's barrier; the builder failed "
            f"(see rank 0's error) or --data-cache-path is not shared by all ranks"
        )
    return arrays
