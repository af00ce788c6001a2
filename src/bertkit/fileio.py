"""Files in and out: crash-safe writing (every file bertkit produces is written to a temporary name, synced, then
renamed), and reading text files, JSON lines and JSON arrays, and stdin line by line with errors that name the path and
line."""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from bertkit.errors import DataError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, fsync, then rename over `path`: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates 0600 whatever the umask; give the file the mode a plain open() would have
        os.chmod(tmp, 0o666 & ~process_umask())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


@functools.cache
def process_umask() -> int:
    """The process umask, read once. Linux reports it in /proc/self/status; elsewhere it can only be read by
    setting it, which is done once here (a thread creating a file in that instant would see umask 0)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_intact(directory: str | Path, files: dict[str, str]) -> bool:
    """Whether every file named in `files` (name -> sha256, as a manifest records them) is in `directory` with
    exactly those bytes; a missing or unreadable file counts as not intact."""
    try:
        return all(sha256_file(Path(directory) / name) == expected for name, expected in files.items())
    except OSError:
        return False


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a directory, so failure is harmless.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a UTF-8 text file (gzip-compressed when it ends in .gz), a leading
    BOM dropped; a file that is missing, a directory, unreadable, or a byte sequence that is not UTF-8 is a
    DataError naming the file (and the line)."""
    for number, line, _ in read_line_pieces(path, None):
        yield number, line


class NotJSON(str):
    """A line that is not JSON (why), in place of its value: the reader refuses or skips it."""


def json_lines(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSON-lines file; a line that is not JSON gives a NotJSON."""
    items: list[tuple[int, Any]] = []
    for number, line in read_lines(path):
        if line.strip():
            try:
                items.append((number, json.loads(line)))
            except (json.JSONDecodeError, RecursionError) as exc:
                items.append((number, NotJSON(f"not JSON ({exc})")))
    return items


def json_items(path: str | Path) -> list[tuple[int, Any]]:
    """The elements of a (pretty-printed) JSON array with the line each starts on; JSON lines are read too."""
    text = "\n".join(line for _, line in read_lines(path))
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] != "[":
        return json_lines(path)
    decoder, items = json.JSONDecoder(), []
    position, line, counted = start + 1, 1, 0
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            raise DataError("the JSON array is not closed with ]", str(path), text.count("\n") + 1)
        line += text.count("\n", counted, position)
        counted = position
        if text[position] == "]":
            return items
        try:
            value, position = decoder.raw_decode(text, position)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise DataError(f"not JSON: {exc}", str(path), line) from exc
        items.append((line, value))


# bytes read at a time from a line that has no end in sight: what a reader of a corpus without newlines holds
LINE_PIECE_BYTES = 1 << 20


def read_line_pieces(path: str | Path, piece_bytes: int | None) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, whether the line ends here) of a file read as `read_lines` reads it, but a line longer
    than `piece_bytes` bytes comes in pieces of at most that many bytes (cut between characters; None: whole lines),
    so a file of one 200 MB line is never held whole. A line's last piece has its newline removed; a file whose last
    line fills its last piece exactly, without a newline, ends with an empty piece that ends the line."""
    path = Path(path)
    size = -1 if piece_bytes is None else max(piece_bytes, 4)  # room for the longest UTF-8 character
    with open_for_reading(path) as raw_handle:
        # a .gz file is read through gzip, line by line, never decompressed whole
        handle = gzip.GzipFile(fileobj=raw_handle) if path.suffix == ".gz" else raw_handle
        number, ended, done, carry = 0, True, 0, b""  # done: bytes of the line before `carry`
        try:
            while True:
                want = size - len(carry) if size > 0 else -1  # with the bytes kept back, a piece stays within size
                raw = handle.readline(want)
                if not raw:
                    break
                if ended:
                    number, done = number + 1, 0
                # a line ends at its newline, or where readline stopped short of the size asked: the end of the file
                ended = raw.endswith(b"\n") or want < 0 or len(raw) < want
                data, carry = carry + raw, b""
                if not ended:  # a character cut by the piece's end is kept for the next piece
                    keep = _complete_utf8(data)
                    data, carry = data[:keep], data[keep:]
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"not UTF-8 text ({exc.reason} at byte {done + exc.start})", str(path),
                                    number) from exc
                done += len(data)
                if number == 1 and done == len(data):
                    text = text.removeprefix("\ufeff")
                yield number, text.rstrip("\r\n") if ended else text, ended
            if carry:  # the file ends inside a character
                raise DataError(f"not UTF-8 text (unexpected end of data at byte {done})", str(path), number)
            if not ended:
                yield number, "", True
        except (OSError, EOFError) as exc:  # EIO mid-file, a damaged or cut .gz: the file's fault, not a crash
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise DataError(f"read failed after line {number} ({reason})", str(path)) from exc


def _complete_utf8(data: bytes) -> int:
    """The length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:  # ASCII: complete
            return len(data)
        if byte >= 0xC0:  # a lead byte: complete if its continuation bytes are all here
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)  # no lead byte in reach: not UTF-8, and the decoder says where


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file (for JSON documents), a leading BOM dropped; the same errors as `read_lines`."""
    path = Path(path)
    with open_for_reading(path) as handle:
        try:
            data = handle.read()
        except OSError as exc:
            raise DataError(f"read failed ({exc.strerror or exc})", str(path)) from exc
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", str(path), line) from exc


def open_for_reading(path: str | Path) -> BinaryIO:
    """`open(path, "rb")`, every way it can fail turned into a DataError that says what is wrong with the path:
    not found, a broken symbolic link, a directory, not a regular file (a FIFO would block), permission denied."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"broken symbolic link (it points to {os.readlink(path)!r}, which does not exist)",
                            str(path)) from None
        raise DataError("file not found", str(path)) from None
    except NotADirectoryError:
        raise DataError("not found: a parent of this path is a file, not a directory", str(path)) from None
    except OSError as exc:  # EACCES on a parent directory, ELOOP, ENAMETOOLONG, ...
        raise DataError(f"cannot read ({exc.strerror or exc})", str(path)) from None
    if stat.S_ISDIR(mode):
        raise DataError("is a directory; expected a file", str(path))
    if not stat.S_ISREG(mode):
        raise DataError("is not a regular file (a pipe, socket or device); expected a file", str(path))
    try:
        return open(path, "rb")
    except PermissionError:
        raise DataError("permission denied: the file is not readable by this user", str(path)) from None
    except OSError as exc:
        raise DataError(f"cannot read ({exc.strerror or exc})", str(path)) from None


# ---- files named on the command line: checked before a model is loaded, so a typo costs no waiting ------------

def check_input_file(name: str) -> None:
    """'-' (stdin) or a readable regular file; else DataError naming the path and what it is instead (the checks
    every reader makes, `open_for_reading`, made before a model is loaded)."""
    if name != "-":
        open_for_reading(name).close()


def check_output_file(name: str) -> None:
    """'-' (stdout) or a file name whose directory exists and is writable; else an error naming the path."""
    if name == "-":
        return
    path = Path(name)
    if path.is_dir():
        raise DataError("is a directory; expected a file name to write", name)
    parent = path.parent
    if not parent.exists():
        raise DataError(f"directory {parent} does not exist", name)
    if not parent.is_dir():
        raise DataError(f"{parent} is not a directory", name)
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise DataError("cannot write here (permission denied)", name)


def input_lines(name: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its newline) of a UTF-8 file or of stdin ('-'): a BOM before the first line is
    dropped, and bytes that are not UTF-8 are a DataError naming the line."""
    if name != "-":
        yield from read_lines(name)  # says what is wrong with a missing, unreadable or odd path
        return
    source = getattr(sys.stdin, "buffer", sys.stdin)  # bytes when it is a real stream, text when replaced in tests
    for number, raw in enumerate(source, start=1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", "<stdin>", number) from exc
        if number == 1:
            line = line.removeprefix("\ufeff")
        yield number, line.rstrip("\r\n")
