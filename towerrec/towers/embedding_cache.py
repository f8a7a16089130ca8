"""An append-only, memory-mapped store of text embeddings, keyed by the texts' SHA-1.

Layout of a cache folder::

    chunk-000000-4711.vectors.npy   float32 [n, dim]   (written first)
    chunk-000000-4711.keys.npy      "S20"   [n]        (SHA-1 digests, written last)
    .tmp-4711-...                   a chunk being written by process 4711

A chunk is `chunk-<number>-<pid>`: the pid keeps two writers apart even when they pick the
same number. Each file is written under a temporary name and renamed into place, vectors
before keys, so a chunk whose keys exist has its vectors; a killed writer loses at most the
chunk it was writing. Readers only look at `*.keys.npy`, and skip a chunk that does not load
(truncated, wrong shape) with a warning.

In memory, the cache is one sorted array of keys and two parallel arrays (chunk, row):
about 28 bytes a text, no Python object per text. Vectors stay on disk and are memory-mapped
when read.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
import warnings
from pathlib import Path
from typing import Iterable, List, Optional, Set, Tuple

import numpy as np

KEY_DTYPE = np.dtype("S20")
_CHUNK = re.compile(r"^chunk-(\d+)-(\d+)\.keys\.npy$")
# What a killed writer leaves: its temporaries, or vectors it renamed but no keys.
_LEFTOVER = re.compile(r"^(?:\.tmp-(\d+)-.*|chunk-\d+-(\d+)\.vectors\.npy)$")
# A writer takes seconds to write a chunk; only older leftovers are removed, so that a
# writer whose pid this machine cannot see (another host, another pid namespace) is safe.
LEFTOVER_AGE_S = 3600


def text_keys(texts: Iterable[str]) -> np.ndarray:
    """texts [n] -> their SHA-1 digests of UTF-8, "S20" [n]."""
    return np.array([hashlib.sha1(t.encode("utf-8")).digest() for t in texts],
                    dtype=KEY_DTYPE)


class EmbeddingCache:
    """key -> float32 [dim] vector, stored as chunks under `directory`."""

    def __init__(self, directory: Path, dim: int):
        self.directory = Path(directory)
        self.dim = int(dim)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._chunks: List[str] = []     # chunk names; an index in `_chunk` points here
        self._seen: Set[str] = set()      # chunk names loaded or skipped
        self._next = 0                    # the next chunk number this process tries
        self._keys = np.zeros([0], KEY_DTYPE)   # sorted, unique
        self._chunk = np.zeros([0], np.int32)
        self._row = np.zeros([0], np.int32)
        self._remove_leftovers()
        self.refresh()

    def __len__(self) -> int:
        self.refresh()
        return len(self._keys)

    def refresh(self):
        """Indexes the chunks other processes (or this one) wrote since the last look."""
        new_keys, new_chunk, new_row = [], [], []
        for name in sorted(os.listdir(self.directory)):
            match = _CHUNK.match(name)
            if not match:
                continue
            self._next = max(self._next, int(match.group(1)) + 1)
            stem = name[:-len(".keys.npy")]
            if stem in self._seen:
                continue
            self._seen.add(stem)
            keys = self._load_keys(stem)
            if keys is None:
                continue
            self._chunks.append(stem)
            new_keys.append(keys)
            new_chunk.append(np.full(len(keys), len(self._chunks) - 1, np.int32))
            new_row.append(np.arange(len(keys), dtype=np.int32))
        if new_keys:
            self._merge(np.concatenate(new_keys), np.concatenate(new_chunk),
                        np.concatenate(new_row))

    def locate(self, keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """keys "S20" [n] -> (chunk [n] int32, row [n] int32); chunk is -1 where absent."""
        self.refresh()
        chunk = np.full(len(keys), -1, np.int32)
        row = np.zeros(len(keys), np.int32)
        if len(self._keys) and len(keys):
            at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
            found = self._keys[at] == keys
            chunk[found], row[found] = self._chunk[at[found]], self._row[at[found]]
        return chunk, row

    def read(self, chunk: np.ndarray, row: np.ndarray, out: np.ndarray,
             at: Optional[np.ndarray] = None) -> np.ndarray:
        """Copies the located vectors into `out` [m, dim]: row i goes to out[at[i]].

        chunk, row [n] as `locate` returns them (-1 rows are left alone); `at` [n] defaults
        to 0..n-1. Returns found [n] bool: False also where a chunk could not be read.
        """
        at = np.arange(len(chunk)) if at is None else np.asarray(at)
        found = chunk >= 0
        # By chunk, then row: each memory map is opened once and read front to back.
        order = np.lexsort((row, chunk))
        order = order[found[order]]
        starts = np.flatnonzero(np.diff(chunk[order], prepend=-1))
        for begin, end in zip(starts, list(starts[1:]) + [len(order)]):
            part = order[begin:end]
            vectors = self._open_vectors(self._chunks[chunk[part[0]]])
            if vectors is None:
                found[part] = False
                continue
            out[at[part]] = vectors[row[part]]
        return found

    def put(self, keys: np.ndarray, vectors: np.ndarray):
        """Appends one chunk: keys "S20" [n], vectors float32 [n, dim]."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        keys = np.asarray(keys, KEY_DTYPE)
        if len(keys) != len(vectors) or vectors.shape[1:] != (self.dim,):
            raise ValueError(f"put: {len(keys)} keys, vectors {vectors.shape}, dim {self.dim}")
        if not len(keys):
            return
        self.refresh()  # also moves `_next` past numbers other processes took
        stem = f"chunk-{self._next:06d}-{os.getpid()}"
        self._next += 1
        self._write(stem + ".vectors.npy", vectors)
        self._write(stem + ".keys.npy", keys)  # last: it makes the chunk visible
        self._seen.add(stem)
        self._chunks.append(stem)
        self._merge(keys, np.full(len(keys), len(self._chunks) - 1, np.int32),
                    np.arange(len(keys), dtype=np.int32))

    def import_npz(self, path: Path, chunk_size: int = 8192):
        """Adds the old format: {keys: hex SHA-1 [n] str, values: [n, dim]} in one .npz."""
        stored = np.load(path, allow_pickle=False)
        keys = np.array([bytes.fromhex(k) for k in stored["keys"].tolist()], KEY_DTYPE)
        values = stored["values"]
        for start in range(0, len(keys), chunk_size):
            chunk_keys = keys[start:start + chunk_size]
            missing = self.locate(chunk_keys)[0] < 0
            self.put(chunk_keys[missing], values[start:start + chunk_size][missing])

    def _merge(self, keys, chunk, row):
        """Adds (key, chunk, row) triples to the sorted index; a key already there is kept."""
        keys, first = np.unique(keys, return_index=True)
        chunk, row = chunk[first], row[first]
        at = np.searchsorted(self._keys, keys)
        if len(self._keys):
            known = self._keys[np.minimum(at, len(self._keys) - 1)] == keys
            new = ~known
            keys, chunk, row, at = keys[new], chunk[new], row[new], at[new]
        self._keys = np.insert(self._keys, at, keys)
        self._chunk = np.insert(self._chunk, at, chunk)
        self._row = np.insert(self._row, at, row)

    def _load_keys(self, stem: str) -> Optional[np.ndarray]:
        try:
            keys = np.load(self.directory / (stem + ".keys.npy"), allow_pickle=False)
            vectors = np.load(self.directory / (stem + ".vectors.npy"), mmap_mode="r")
            if keys.dtype != KEY_DTYPE or keys.ndim != 1:
                raise ValueError(f"keys {keys.dtype} {keys.shape}")
            if vectors.dtype != np.float32 or vectors.shape != (len(keys), self.dim):
                raise ValueError(f"vectors {vectors.dtype} {vectors.shape}, "
                                 f"{len(keys)} keys of dim {self.dim}")
        except (OSError, ValueError, EOFError) as e:
            warnings.warn(f"embedding cache: skipping chunk {self.directory / stem}: {e}",
                          stacklevel=2)
            return None
        return keys

    def _open_vectors(self, stem: str):
        try:
            return np.load(self.directory / (stem + ".vectors.npy"), mmap_mode="r")
        except (OSError, ValueError) as e:
            # Gone (the folder was cleared) or damaged since it was indexed: forget it, so
            # that its texts are encoded again.
            warnings.warn(f"embedding cache: cannot read chunk {self.directory / stem}: {e}",
                          stacklevel=2)
            keep = self._chunk != self._chunks.index(stem)
            self._keys, self._chunk, self._row = (
                self._keys[keep], self._chunk[keep], self._row[keep])
            return None

    def _write(self, name: str, array: np.ndarray):
        tmp = self.directory / f".tmp-{os.getpid()}-{name}"
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, self.directory / name)

    def _remove_leftovers(self):
        """Deletes the partial chunks of killed writers (pid not running, file an hour old)."""
        names = set(os.listdir(self.directory))
        for name in names:
            match = _LEFTOVER.match(name)
            if not match or (match.group(2) and
                             name.replace(".vectors.npy", ".keys.npy") in names):
                continue  # not a leftover, or the vectors of a complete chunk
            path = self.directory / name
            try:
                old = time.time() - path.stat().st_mtime > LEFTOVER_AGE_S
                if old and not _running(int(match.group(1) or match.group(2))):
                    os.remove(path)
            except OSError:
                pass


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
