"""`FileArray`: a one-dimensional .npy array read piecewise with `os.pread`, never memory-mapped."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bertkit.errors import DataError


class FileArray:
    """A one-dimensional .npy array read piecewise with `os.pread`, never memory-mapped: what a run has read stays in
    the kernel's page cache (shared, evictable), not in the process. A map would keep every page it touched, and the
    16 pages the kernel maps around each fault, resident in the process until the run ends, so a long run over a
    large corpus would end up holding the corpus in its RSS.

    Supports what the example builder needs: `len`, an integer, a slice with step 1 (a new array),
    `searchsorted` (one read through a sample of every 512th value kept in memory), and `np.asarray` (the whole
    array). Forked workers share the descriptor (pread has no file position); pickling reopens the file.
    """

    SAMPLE = 512
    SAMPLE_BLOCK = 8192  # samples taken per read while the sample is built

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _fortran_order, dtype = read_header(f)
            except ValueError as exc:
                raise DataError(f"not a .npy array ({exc})", self.path) from exc
            self.offset = f.tell()
            size = os.fstat(f.fileno()).st_size
        if len(shape) != 1 or dtype.hasobject:
            raise DataError(f"expected a one-dimensional numeric array, found shape {shape} of {dtype}", self.path)
        if size != self.offset + shape[0] * dtype.itemsize:
            # checked now: a short file would otherwise fail in the middle of a run, at the first read past its end
            raise DataError(f"holds {size:,} bytes; its header describes {self.offset + shape[0] * dtype.itemsize:,} "
                            "(a cut or damaged file)", self.path)
        self.dtype, self.shape = dtype, shape
        self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._sample: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, start: int, stop: int) -> np.ndarray:
        size = self.dtype.itemsize
        want = max(stop - start, 0) * size
        out = bytearray(want)
        view, done = memoryview(out), 0
        while done < want:  # pieces of at most 1 GiB (a larger pread fails on some systems); short reads continue
            got = os.preadv(self.fd, [view[done : done + min(want - done, 2**30)]], self.offset + start * size + done)
            if got == 0:
                raise DataError(f"file ends {want - done} bytes early", self.path)
            done += got
        return np.frombuffer(out, dtype=self.dtype)

    def __getitem__(self, key: int | slice) -> Any:
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                raise ValueError("FileArray slices take step 1")
            return self._read(start, max(start, stop))
        index = int(key)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(key)
        return self._read(index, index + 1)[0]

    def __iter__(self) -> Iterator[Any]:
        return iter(np.asarray(self))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = self._read(0, len(self))
        return data if dtype is None else data.astype(dtype)

    def searchsorted(self, value: int, side: str = "left") -> int:
        """np.searchsorted on the sorted file: the sample narrows it to one block of SAMPLE values, read at once."""
        if self._sample is None:  # read in blocks, so the whole array is never in memory at once
            block = self.SAMPLE * self.SAMPLE_BLOCK
            parts = [self._read(s, min(s + block, len(self)))[:: self.SAMPLE].copy() for s in
                     range(0, len(self), block)]
            self._sample = np.concatenate(parts) if parts else np.zeros(0, self.dtype)
        block = int(np.searchsorted(self._sample, value, side=side))  # the answer lies in the block before it
        first = max(block - 1, 0) * self.SAMPLE
        stop = min(first + self.SAMPLE + 1, len(self))
        return first + int(np.searchsorted(self[first:stop], value, side=side))

    def sha256(self, inspect: Callable[[int, np.ndarray], None] | None = None) -> str:
        """sha256 of the whole file, read once through the descriptor the array is read by, in blocks of 16 MiB;
        `inspect(start, values)` sees each block of values on the way."""
        digest = hashlib.sha256(os.pread(self.fd, self.offset, 0))
        step = max(1, (16 << 20) // self.dtype.itemsize)
        for start in range(0, len(self), step):
            values = self._read(start, min(start + step, len(self)))
            digest.update(values)
            if inspect is not None:
                inspect(start, values)
        return digest.hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def __del__(self) -> None:
        fd = getattr(self, "fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
