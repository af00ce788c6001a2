"""Texts on disk for a search index: lines appended with their corpus line numbers, each read back by one `pread`
at its byte offset, so a reader holds no text in memory (the offsets and line numbers are `.npy` arrays it reads
piecewise through `FileArray`)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np

from bertkit.errors import DataError
from bertkit.filearray import FileArray

TEXTS_FILE = "texts.txt"  # the texts, one a line, UTF-8
OFFSETS_FILE = "offsets.npy"  # int64, count + 1: text i is bytes offsets[i] to offsets[i + 1] - 1 (its newline)
LINES_FILE = "lines.npy"  # int64, count: the corpus line each text came from (1-based)
FILES = (TEXTS_FILE, OFFSETS_FILE, LINES_FILE)


class TextWriter:
    """Appends texts to a directory as they are indexed. The two arrays grow as raw int64 files beside their final
    names and become `.npy` files at `close()` (a .npy header holds the length, unknown until the end)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.texts = open(self.directory / TEXTS_FILE, "wb")  # noqa: SIM115 (open until close())
        self.offsets = open(self.directory / (OFFSETS_FILE + ".part"), "wb")  # noqa: SIM115
        self.lines = open(self.directory / (LINES_FILE + ".part"), "wb")  # noqa: SIM115
        self.position = 0
        self.count = 0
        self.offsets.write(np.int64(0).tobytes())

    def add(self, lines: list[int], texts: list[str]) -> None:
        """Texts (without newlines) and the corpus line numbers they came from."""
        data = [(text + "\n").encode("utf-8") for text in texts]
        ends = self.position + np.cumsum([len(d) for d in data], dtype=np.int64)
        self.texts.write(b"".join(data))
        self.offsets.write(ends.tobytes())
        self.lines.write(np.asarray(lines, dtype=np.int64).tobytes())
        self.position = int(ends[-1]) if len(ends) else self.position
        self.count += len(texts)

    def close(self) -> None:
        """Flush and sync the texts; write each array as a .npy file (header, then the raw values copied)."""
        for handle in (self.texts, self.offsets, self.lines):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        for name, length in ((OFFSETS_FILE, self.count + 1), (LINES_FILE, self.count)):
            part = self.directory / (name + ".part")
            with open(self.directory / name, "wb") as out, open(part, "rb") as raw:
                np.lib.format.write_array_header_1_0(out, {"descr": "<i8", "fortran_order": False,
                                                           "shape": (length,)})
                shutil.copyfileobj(raw, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            part.unlink()

    def abort(self) -> None:
        for handle in (self.texts, self.offsets, self.lines):
            handle.close()


class TextStore:
    """The texts of an index, read one at a time: `store[i]` is (corpus line number, text) of row i."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.offsets = FileArray(self.directory / OFFSETS_FILE)
        self.lines = FileArray(self.directory / LINES_FILE)
        if len(self.offsets) != len(self.lines) + 1:
            raise DataError(f"holds {len(self.offsets)} offsets for {len(self.lines)} texts (expected one more); "
                            "the index is damaged: build it again", str(self.directory))
        self.path = self.directory / TEXTS_FILE
        self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        size = os.fstat(self.fd).st_size
        if int(self.offsets[-1]) != size:
            os.close(self.fd)
            raise DataError(f"holds {size:,} bytes; its offsets end at {int(self.offsets[-1]):,} (a cut or altered "
                            "file): build the index again", str(self.path))

    def __len__(self) -> int:
        return len(self.lines)

    def __getitem__(self, row: int) -> tuple[int, str]:
        start, end = (int(v) for v in self.offsets[row : row + 2])
        data = os.pread(self.fd, end - start, start)
        return int(self.lines[row]), data.decode("utf-8").removesuffix("\n")

    def __del__(self) -> None:  # the arrays close their own descriptors
        fd = getattr(self, "fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
