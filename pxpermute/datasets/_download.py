"""Fetching published data files into a local cache (pooch), with clear errors.

Cache location, first match wins: the ``data_dir`` argument, the environment
variable ``PXPERMUTE_DATA_DIR``, then ``pooch.os_cache("pxpermute")``.  Every file
lives at ``<cache>/<relative path>``; putting a file there by hand (or pointing
``data_dir`` at a folder that already holds it) makes the loader use it without
any network access.  A file whose SHA-256 does not match the registry is never
used silently.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RemoteFile", "cache_dir", "fetch_file", "sha256sum", "DataIntegrityError", "DataUnavailableError"]

ENV_VAR = "PXPERMUTE_DATA_DIR"


class DataUnavailableError(FileNotFoundError):
    """A data file is neither in the cache nor downloadable (offline, or ``download=False``)."""


class DataIntegrityError(OSError):
    """A data file exists but its SHA-256 differs from the registry (corrupted or truncated)."""


@dataclass(frozen=True)
class RemoteFile:
    """One registry entry: where a file lives in the cache and online.

    ``sha256=None`` means the hash is not known yet: the file is then used without
    verification and the loaders say so in their documentation.
    """

    relpath: str
    url: str
    sha256: str | None
    size: int | None = None


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder data files are read from and downloaded to."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("pxpermute"))


def sha256sum(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _manual_hint(entry: RemoteFile, target: Path) -> str:
    return (
        f"Download it by hand from {entry.url} and save it as {target} "
        f"(or pass data_dir=/folder/holding/{entry.relpath} / set {ENV_VAR})."
    )


def fetch_file(
    entry: RemoteFile,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
) -> Path:
    """Return the local path of ``entry``, downloading it if allowed.

    Raises
    ------
    DataUnavailableError
        The file is not in the cache and ``download=False`` or the download failed.
    DataIntegrityError
        The cached file's SHA-256 differs from the registry.
    """
    root = cache_dir(data_dir)
    target = root / entry.relpath
    if target.exists():
        if verify and entry.sha256 is not None:
            _verify(target, entry)
        return target
    if not download:
        raise DataUnavailableError(f"{entry.relpath} is not in {root} and download=False. " + _manual_hint(entry, target))
    import pooch

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        path = pooch.retrieve(
            entry.url,
            known_hash=f"sha256:{entry.sha256}" if entry.sha256 else None,
            fname=target.name,
            path=target.parent,
            progressbar=False,
        )
    except ValueError as err:  # pooch raises ValueError on hash mismatch
        raise DataIntegrityError(f"downloaded {entry.url} but its hash does not match the registry: {err}") from err
    except Exception as err:  # network errors come in many types (requests, urllib, socket)
        raise DataUnavailableError(
            f"could not download {entry.relpath} ({type(err).__name__}: {err}). " + _manual_hint(entry, target)
        ) from err
    return Path(path)


def _verify(path: Path, entry: RemoteFile) -> None:
    """Check the SHA-256, remembering a success next to the file (keyed on size + mtime)."""
    st = path.stat()
    stamp = f"{entry.sha256} {st.st_size} {st.st_mtime_ns}"
    marker = path.with_name(path.name + ".sha256-ok")
    try:
        if marker.read_text() == stamp:
            return
    except OSError:
        pass
    digest = sha256sum(path)
    if digest != entry.sha256:
        raise DataIntegrityError(
            f"{path} is corrupted or truncated: SHA-256 {digest} (size {st.st_size} bytes), expected {entry.sha256}. "
            "Delete it and download again. " + _manual_hint(entry, path)
        )
    if not path.parent.stat().st_mode & 0o222:  # folder marked read-only (root could still write): leave it alone
        return
    try:
        marker.write_text(stamp)
    except OSError:  # read-only cache (e.g. a shared data folder): verify every time
        pass
