"""Resumable runs: the checkpoint file of partial confusion matrices.

With ``checkpoint=path`` the accumulated matrices are written after every
finished chunk of repeats, atomically (temporary file + rename, via
:func:`pxpermute._fileio.atomic_write`), with a SHA-256 checksum and the
configuration fingerprint (:mod:`pxpermute.fingerprint`).  A rerun with the same
arguments continues from the file and gives the identical final result; a
corrupted file or one written for another configuration raises
:class:`CheckpointError`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._fileio import atomic_write
from .fingerprint import describe_difference, fingerprint_digest

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "CHECKPOINT_VERSION"]

CHECKPOINT_MAGIC = b"PXPERMUTE-CHECKPOINT\n"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is corrupted, truncated, or belongs to another configuration."""


def save_checkpoint(path: str | os.PathLike, fp: Mapping[str, Any], baseline: np.ndarray, confusion: np.ndarray,
                    n_forward_images: int, extras: Mapping[str, np.ndarray] | None = None,
                    data_stream_digest: str | None = None) -> Path:
    """Write a checkpoint atomically (temporary file + fsync + rename).

    Layout: the line ``PXPERMUTE-CHECKPOINT``, one line of JSON header
    (format version, configuration fingerprint, repeats done, payload size and
    SHA-256), then an ``.npz`` payload with ``baseline`` (K, K) and
    ``confusion`` (R, U, K, K), plus ``extra_<name>`` arrays (e.g. bootstrap
    counts pooled over the finished repeats).  ``data_stream_digest`` (from
    :class:`pxpermute.fingerprint.StreamDigest`) covers every evaluated image; the
    runner compares it when it resumes.
    """
    path = Path(path)
    buf = io.BytesIO()
    arrays = {f"extra_{k}": np.asarray(v) for k, v in (extras or {}).items() if v is not None}
    if data_stream_digest is not None:  # in the payload, so its checksum covers it
        arrays["data_stream_digest"] = np.frombuffer(str(data_stream_digest).encode(), np.uint8)
    np.savez(buf, baseline=np.asarray(baseline), confusion=np.asarray(confusion), **arrays)
    payload = buf.getvalue()
    header = {
        "format_version": CHECKPOINT_VERSION,
        "fingerprint": dict(fp),
        "fingerprint_sha256": fingerprint_digest(fp),
        "repeats_done": int(np.asarray(confusion).shape[0]),
        "n_forward_images": int(n_forward_images),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    blob = CHECKPOINT_MAGIC + json.dumps(header, sort_keys=True, default=str).encode() + b"\n" + payload
    return atomic_write(path, blob)


def load_checkpoint(path: str | os.PathLike, fp: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint.

    Returns ``{"baseline", "confusion", "extras", "n_forward_images", "header", "data_stream_digest"}``
    (the digest of every evaluated image, None in files written before it existed).

    Raises :class:`CheckpointError` if the file is corrupted or truncated (bad
    header, size or checksum) or, when ``fp`` is given, if it was written for a
    different configuration (the message names what differs).
    """
    path = Path(path)
    blob = path.read_bytes()
    hint = f"delete {path} to start over, or pass another checkpoint path"
    if not blob.startswith(CHECKPOINT_MAGIC):
        raise CheckpointError(f"{path} is not a pxpermute checkpoint (missing header); {hint}")
    rest = blob[len(CHECKPOINT_MAGIC):]
    nl = rest.find(b"\n")
    try:
        header = json.loads(rest[:nl].decode()) if nl >= 0 else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or "payload_sha256" not in header:
        raise CheckpointError(f"checkpoint {path} is corrupted (unreadable header); {hint}")
    if header.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {header.get('format_version')}, "
                              f"this pxpermute reads version {CHECKPOINT_VERSION}; {hint}")
    payload = rest[nl + 1:]
    if len(payload) != header.get("payload_bytes") or hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupted or truncated (checksum mismatch); {hint}")
    if header.get("fingerprint_sha256") != fingerprint_digest(header.get("fingerprint", {})):
        raise CheckpointError(f"checkpoint {path} is corrupted (configuration record does not match its checksum); {hint}")
    if fp is not None and header["fingerprint_sha256"] != fingerprint_digest(fp):
        raise CheckpointError(
            f"checkpoint {path} was written for a different configuration ({describe_difference(header['fingerprint'], dict(fp))}); {hint}"
        )
    with np.load(io.BytesIO(payload)) as z:
        baseline, confusion = z["baseline"], z["confusion"]
        extras = {k[len("extra_"):]: z[k] for k in z.files if k.startswith("extra_")}
        stream = bytes(z["data_stream_digest"]).decode() if "data_stream_digest" in z.files else None
    if confusion.shape[0] != header["repeats_done"]:
        raise CheckpointError(f"checkpoint {path} is inconsistent (repeat count); {hint}")
    return {"baseline": baseline, "confusion": confusion, "extras": extras,
            "n_forward_images": int(header["n_forward_images"]), "header": header, "data_stream_digest": stream}
