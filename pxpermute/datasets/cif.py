"""Read Amnis/Cytek ImageStream and FlowSight ``.cif`` files without Java.

A compensated image file (``.cif``) is a TIFF container that does not follow the
TIFF standard closely enough for ordinary TIFF readers:

* IFD 0 holds no image (a 1 x 1 placeholder) but the file-wide metadata: tag
  33027 is an XML block with the acquisition settings (channels in use,
  magnification, illumination, channel names), 33064 the instrument's
  configuration XML, and further Amnis tags (33000-33084) carry the
  acquisition time, operator, instrument name, source ``.rif`` file and
  software version.
* every acquired object then has two IFDs: a greyscale image (compression
  30817, 16 bits per sample) and its segmentation mask (compression 30818,
  8 bits per sample).  Both hold all channels side by side: an object of
  height ``H`` imaged in ``C`` channels is one ``H x (C * W)`` plane.  Objects
  have their own sizes.  Amnis tag 33002 says which kind an IFD is (2 image,
  3 mask) and 33003 holds the object's number in the acquisition.

The two compressions (as documented by Bio-Formats' ``FlowSightReader``):

greyscale (30817)
    A stream of 4-bit nibbles, low nibble of each byte first.  Each value is a
    variable-length signed integer: every nibble contributes its low three bits
    (least significant group first); a set bit 3 means "another nibble
    follows"; in the last nibble bit 2 is the sign (the value is
    sign-extended).  The values are prediction residuals:
    ``pixel[y, x] = d + pixel[y-1, x] + pixel[y, x-1] - pixel[y-1, x-1]``,
    which is exactly the two-dimensional cumulative sum of the residuals, so
    the decoder here is a handful of numpy operations (no loop per pixel).
bitmask (30818)
    Byte pairs ``(value, run_length - 1)``: a run-length code, decoded with
    ``np.repeat``.

The format has no checksum.  The reader checks everything it can: the IFD
chain stays inside the file, every object has an image and a mask of the same
size, the width splits into whole channels, the residual stream holds exactly
one value per pixel (at most one padding nibble left over), the runs cover the
mask exactly and every decoded pixel lies in the range the header declares.
A file failing any of these raises :class:`CIFError` naming the file and the
object.  A flipped bit that leaves all of these intact (e.g. a residual's low
bit) cannot be detected by any decoder.

Example
-------
>>> from pxpermute.datasets import CIFFile  # doctest: +SKIP
>>> with CIFFile("example.cif") as f:  # doctest: +SKIP
...     image, mask = f[0]             # (C, H, W) uint16 and bool
...     f.channel_names, len(f)
"""
from __future__ import annotations

import os
import re
import struct
import threading
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from ._download import DataIntegrityError, RemoteFile, fetch_file
from .base import IFCDataset, resolve_channels
from .hdf5 import (
    _PAD_MODES,
    _encode_labels,
    _normalize_rows,
    _target_hw,
    pad_or_crop,
    write_hdf5_dataset,
)

__all__ = [
    "CIF_REGISTRY",
    "CIFError",
    "CIFFile",
    "CIFImages",
    "cif_to_hdf5",
    "decode_bitmask",
    "decode_greyscale",
    "fetch_cif_example",
    "load_cif",
]

GREYSCALE_COMPRESSION = 30817
BITMASK_COMPRESSION = 30818

#: Names of the Amnis tags this reader understands (others are kept by number).
CIF_TAG_NAMES = {
    33000: "channel_count",
    33002: "ifd_kind",  # 1 file header, 2 object image, 3 object mask
    33003: "object_number",
    33004: "acquisition_time",
    33005: "operator",
    33006: "instrument",
    33007: "channel_names",
    33008: "channel_descriptions",
    33018: "object_count",
    33026: "source_rif",
    33027: "metadata_xml",
    33052: "background_mean",  # one value per channel; matches the decoded background (see tests)
    33053: "background_std",
    33064: "instrument_xml",
    33066: "software_version",
}
_XML_TAG = 33027
_INSTRUMENT_XML_TAG = 33064

#: Where the example file lives (relative to ``PXPERMUTE_DATA_DIR``) and online.
CIF_REGISTRY = {
    "example": RemoteFile(
        relpath="amnis_cif/example.cif",
        url="https://github.com/nmichiels/cifDataset/raw/master/examples/example.cif",  # at commit 3e562108e8d3
        sha256="fe778b7ab49b379498918e648a1cc05a0329b26b8cdcc0934d2cb56f2feffde9",
        size=2337947,
    )
}

# TIFF field types -> (struct code, size in bytes)
_TYPES = {
    1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("I", 8), 6: ("b", 1), 7: ("B", 1),
    8: ("h", 2), 9: ("i", 4), 10: ("i", 8), 11: ("f", 4), 12: ("d", 8), 13: ("I", 4),
}
_MAX_RESIDUAL_NIBBLES = 7  # 21-bit residuals; a 16-bit image never needs more than 6


class CIFError(DataIntegrityError):
    """A ``.cif`` file is not a readable Amnis file: not a CIF, truncated, corrupted or unsupported."""


# ---------------------------------------------------------------------------
# the two Amnis compressions
# ---------------------------------------------------------------------------
def decode_greyscale(data: bytes | np.ndarray, width: int, height: int, *, bits: int = 16) -> np.ndarray:
    """Decode one Amnis greyscale plane (compression 30817) into ``(height, width)`` integers.

    Parameters
    ----------
    data : bytes or uint8 array
        The concatenated strip bytes of the IFD.
    width, height : int
        Plane size from the IFD.
    bits : int
        Bits per sample declared in the IFD; every pixel must lie in ``[0, 2**bits)``.

    Returns
    -------
    np.ndarray of uint16 (``bits <= 16``) or uint32

    Raises
    ------
    ValueError
        The stream does not hold exactly one residual per pixel, a residual is
        implausibly long, or a pixel falls outside ``[0, 2**bits)``.

    Examples
    --------
    >>> decode_greyscale(bytes([0x01, 0x00]), 2, 1).tolist()   # residuals 1, 0 -> pixels 1, 1
    [[1, 1]]
    """
    n = int(width) * int(height)
    raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8, copy=False)
    nib = np.empty(raw.size * 2, np.uint8)
    nib[0::2] = raw & 0x0F
    nib[1::2] = raw >> 4
    ends = np.flatnonzero(nib < 8)  # nibbles without the continuation bit close a value
    if ends.size < n:
        raise ValueError(f"greyscale stream holds {ends.size} values for a {height} x {width} plane ({n} pixels)")
    ends = ends[:n]
    used = int(ends[-1]) + 1 if n else 0
    if nib.size - used > 1:
        raise ValueError(
            f"greyscale stream has {nib.size - used} nibbles left after the {n} pixels of a {height} x {width} "
            "plane (at most one padding nibble expected)"
        )
    if n == 0:
        return np.zeros((int(height), int(width)), np.uint16)
    starts = np.empty(n, np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lens = ends - starts + 1
    if int(lens.max()) > _MAX_RESIDUAL_NIBBLES:
        raise ValueError(f"greyscale stream holds a residual of {int(lens.max())} nibbles (at most {_MAX_RESIDUAL_NIBBLES} expected)")
    low = (nib & 7).astype(np.int64)
    vals = low[starts]
    # add the further 3-bit groups of the (few) longer residuals, one group position at a time
    sel = np.flatnonzero(lens > 1)
    j = 1
    while sel.size:
        vals[sel] += low[starts[sel] + j] << (3 * j)
        j += 1
        sel = sel[lens[sel] > j]
    vals -= ((nib[ends] >> 2) & 1).astype(np.int64) << (3 * lens)  # sign-extend negatives
    image = vals.reshape(int(height), int(width))
    np.cumsum(image, axis=0, out=image)
    np.cumsum(image, axis=1, out=image)
    lo, hi = int(image.min()), int(image.max())
    if lo < 0 or hi >= (1 << bits):
        raise ValueError(f"decoded pixels span [{lo}, {hi}], outside the declared {bits}-bit range [0, {(1 << bits) - 1}]")
    return image.astype(np.uint16 if bits <= 16 else np.uint32)


def decode_bitmask(data: bytes | np.ndarray, width: int, height: int) -> np.ndarray:
    """Decode one Amnis bitmask plane (compression 30818) into ``(height, width)`` uint8 labels.

    The stream is byte pairs ``(value, run_length - 1)``; the runs must cover the
    plane exactly.

    Examples
    --------
    >>> decode_bitmask(bytes([0, 1, 1, 0]), 3, 1).tolist()
    [[0, 0, 1]]
    """
    raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8, copy=False)
    n = int(width) * int(height)
    if raw.size % 2:
        raise ValueError(f"bitmask stream has an odd number of bytes ({raw.size}); it must be (value, run) pairs")
    runs = raw[1::2].astype(np.int64) + 1
    total = int(runs.sum())
    if total != n:
        raise ValueError(f"bitmask runs cover {total} pixels, the {height} x {width} plane has {n}")
    return np.repeat(raw[0::2], runs).reshape(int(height), int(width))


# ---------------------------------------------------------------------------
# the index of a file
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plane:
    ifd: int  # position in the IFD chain
    offset: int  # file offset of the IFD
    width: int
    height: int
    bits: int
    compression: int
    strips: tuple[tuple[int, int], ...]  # (offset, byte count)


def _xml_to_dict(elem: ET.Element) -> Any:
    children = list(elem)
    if not children:
        return (elem.text or "").strip()
    out: dict[str, Any] = {}
    for child in children:
        value = _xml_to_dict(child)
        if child.tag in out:
            if not isinstance(out[child.tag], list):
                out[child.tag] = [out[child.tag]]
            out[child.tag].append(value)
        else:
            out[child.tag] = value
    return out


def _number(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


class CIFFile:
    """Lazy reader of one Amnis/Cytek ``.cif`` file.

    Opening indexes the IFD chain once (a few bytes per IFD); pixels are decoded
    only when an object is accessed.

    Parameters
    ----------
    path : path-like
        The ``.cif`` file.

    Attributes
    ----------
    path : pathlib.Path
    n_channels : int
        Channels stored per object (channels in use during acquisition).
    channel_names : list of str
    byteorder : {"<", ">"}
    shapes : np.ndarray, shape (N, 2)
        Height and width (per channel) of every object, known without decoding.
    object_numbers : np.ndarray, shape (N,)
        The acquisition's object numbers (Amnis tag 33003; ``-1`` when absent).

    Notes
    -----
    ``f[i]`` returns ``(image, mask)``: the image ``(C, H, W)`` as the raw
    integers (uint16) and the mask ``(C, H, W)`` as bool (``mask != 0``; the
    file's mask bytes, which can be small labels, come from
    :meth:`read` with ``raw_mask=True``).  Slices and index arrays return
    lists of such pairs; iteration yields them one by one.  The object is
    picklable: the file handle is reopened in whichever process reads, so it
    works in ``DataLoader`` workers.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    CIFError
        The file is not a CIF (e.g. a plain TIFF), is truncated or corrupted,
        or an object lacks its mask.  Decoding problems of one object (unknown
        compression, a damaged stream) are raised when that object is read,
        naming it.

    Examples
    --------
    >>> with CIFFile("example.cif") as f:  # doctest: +SKIP
    ...     image, mask = f[0]
    ...     print(len(f), f.channel_names, image.shape, mask.dtype)
    111 ['Ch1', 'Ch2', 'Ch3', 'Ch4', 'Ch5', 'Ch6'] (6, 43, 46) bool
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"CIF file {self.path} does not exist")
        self._fh = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._size = self.path.stat().st_size
        self._index()

    # -- low-level reading ------------------------------------------------------
    def _handle(self):
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open across reads, closed by close()
            self._pid = os.getpid()
        return self._fh

    def _read(self, offset: int, nbytes: int, what: str) -> bytes:
        if offset < 0 or nbytes < 0 or offset + nbytes > self._size:
            raise self._error(
                f"{what} spans bytes {offset}..{offset + nbytes} but the file has {self._size} bytes "
                "(truncated or corrupted)"
            )
        with self._lock:
            fh = self._handle()
            fh.seek(offset)
            data = fh.read(nbytes)
        if len(data) != nbytes:
            raise self._error(f"{what}: read {len(data)} of {nbytes} bytes at offset {offset} (file changed while open?)")
        return data

    def _error(self, msg: str) -> CIFError:
        return CIFError(f"{self.path}: {msg}")

    def _ifd_entries(self, offset: int, what: str) -> tuple[np.ndarray, int]:
        bo = self.byteorder
        (n,) = struct.unpack(bo + "H", self._read(offset, 2, what))
        if n == 0 or n > 1000:
            raise self._error(f"{what} at offset {offset} claims {n} entries (corrupted)")
        raw = self._read(offset + 2, 12 * n + 4, what)
        dt = np.dtype([("tag", bo + "u2"), ("type", bo + "u2"), ("count", bo + "u4"), ("value", "V4")])
        entries = np.frombuffer(raw, dt, count=n)
        (next_offset,) = struct.unpack(bo + "I", raw[12 * n :])
        return entries, next_offset

    def _tag_value(self, entry: np.void, what: str) -> Any:
        typ, count = int(entry["type"]), int(entry["count"])
        if typ not in _TYPES:
            raise self._error(f"{what}: tag {int(entry['tag'])} has unknown TIFF type {typ}")
        code, size = _TYPES[typ]
        nbytes = size * count
        inline = bytes(entry["value"])
        if nbytes <= 4:
            data = inline[:nbytes]
        else:
            (off,) = struct.unpack(self.byteorder + "I", inline)
            data = self._read(off, nbytes, f"{what} tag {int(entry['tag'])}")
        if typ == 2:
            return data.split(b"\0", 1)[0].decode("latin-1")
        if typ in (5, 10):
            pairs = struct.unpack(self.byteorder + code * (2 * count), data)
            vals = [a / b if b else float("nan") for a, b in zip(pairs[0::2], pairs[1::2])]
        else:
            vals = list(struct.unpack(self.byteorder + code * count, data))
        return vals[0] if count == 1 else vals

    def _tags(self, entries: np.ndarray, wanted: Sequence[int] | None, what: str) -> dict[int, Any]:
        out = {}
        for entry in entries:
            tag = int(entry["tag"])
            if wanted is None or tag in wanted:
                out[tag] = self._tag_value(entry, what)
        return out

    def _index(self) -> None:
        head = self._read(0, 8, "TIFF header") if self._size >= 8 else b""
        if head[:2] == b"II":
            self.byteorder = "<"
        elif head[:2] == b"MM":
            self.byteorder = ">"
        else:
            raise self._error(f"not a TIFF/CIF file (starts with {head[:4]!r}, expected b'II*\\x00' or b'MM\\x00*')")
        (magic,) = struct.unpack(self.byteorder + "H", head[2:4])
        if magic == 43:
            raise self._error("is a BigTIFF; Amnis .cif files are classic TIFF containers (magic 42)")
        if magic != 42:
            raise self._error(f"not a TIFF/CIF file (TIFF magic {magic}, expected 42)")
        (offset,) = struct.unpack(self.byteorder + "I", head[4:8])

        entries, offset = self._ifd_entries(offset, "IFD 0 (file header)")
        self._header = self._tags(entries, None, "file header (IFD 0)")
        if _XML_TAG not in self._header:
            raise self._error(
                f"is a TIFF file but not an Amnis .cif: its first IFD lacks the metadata XML (tag {_XML_TAG}); "
                "CIF files from ImageStream/FlowSight (IDEAS/INSPIRE) carry it"
            )

        planes: list[_Plane] = []
        kinds: list[int] = []
        numbers: list[int] = []
        seen = {0}
        wanted = (256, 257, 258, 259, 273, 279, 33002, 33003)
        while offset:
            k = len(planes) + 1
            what = f"IFD {k} (object {len(planes) // 2} {'image' if k % 2 else 'mask'} by position)"
            if offset in seen:
                raise self._error(f"{what}: the IFD chain loops back to offset {offset} (corrupted)")
            seen.add(offset)
            if offset + 2 > self._size:
                raise self._error(
                    f"{what} should start at byte {offset} but the file ends at {self._size}: the file is truncated "
                    f"after {len(planes) // 2} complete objects"
                )
            entries, next_offset = self._ifd_entries(offset, what)
            t = self._tags(entries, wanted, what)
            missing = [tag for tag in (256, 257, 259, 273, 279) if tag not in t]
            if missing:
                raise self._error(f"{what} lacks the TIFF tags {missing} (corrupted)")
            offs = t[273] if isinstance(t[273], list) else [t[273]]
            counts = t[279] if isinstance(t[279], list) else [t[279]]
            if len(offs) != len(counts):
                raise self._error(f"{what}: {len(offs)} strip offsets but {len(counts)} strip byte counts")
            for so, sc in zip(offs, counts):
                if so + sc > self._size:
                    raise self._error(
                        f"{what}: pixel data spans bytes {so}..{so + sc} beyond the end of the file ({self._size} "
                        f"bytes): the file is truncated after {len(planes) // 2} complete objects"
                    )
            bits = t.get(258, 1)
            bits = bits[0] if isinstance(bits, list) else bits
            planes.append(_Plane(k, offset, int(t[256]), int(t[257]), int(bits), int(t[259]),
                                 tuple(zip((int(o) for o in offs), (int(c) for c in counts)))))
            kind = t.get(33002)
            if kind not in (2, 3):
                kind = {GREYSCALE_COMPRESSION: 2, BITMASK_COMPRESSION: 3}.get(int(t[259]))
            if kind is None:
                raise self._error(
                    f"{what} has compression {t[259]} and no Amnis kind tag 33002: neither a greyscale image "
                    f"({GREYSCALE_COMPRESSION}) nor a bitmask ({BITMASK_COMPRESSION}); cannot pair it with an object"
                )
            kinds.append(kind)
            numbers.append(int(t.get(33003, -1)))
            offset = next_offset

        # pair each image with the mask that follows it
        images: list[_Plane] = []
        masks: list[_Plane] = []
        obj_numbers: list[int] = []
        i = 0
        while i < len(planes):
            obj = len(images)
            if kinds[i] != 2:
                raise self._error(
                    f"IFD {planes[i].ifd} is a mask without an image before it (object {obj}); expected image/mask pairs"
                )
            if i + 1 >= len(planes) or kinds[i + 1] != 3:
                raise self._error(
                    f"object {obj} (object number {numbers[i]}, image IFD {planes[i].ifd}) has no mask IFD after it; "
                    "each object needs an image and a mask IFD"
                )
            img, msk = planes[i], planes[i + 1]
            if (img.width, img.height) != (msk.width, msk.height):
                raise self._error(
                    f"object {obj} (object number {numbers[i]}): image is {img.height} x {img.width} but its mask "
                    f"is {msk.height} x {msk.width}"
                )
            images.append(img)
            masks.append(msk)
            obj_numbers.append(numbers[i])
            i += 2
        self._images = images
        self._masks = masks
        self.object_numbers = np.asarray(obj_numbers, np.int64)

        # channels: the XML's in-use flags, else tag 33000, else the channel-name list
        self._xml = self._parse_xml(self._header[_XML_TAG], "metadata XML (tag 33027)")
        in_use = self._in_use_channels()
        names_tag = self._header.get(33007)
        if in_use:
            n_ch = len(in_use)
        elif isinstance(self._header.get(33000), int):
            n_ch = int(self._header[33000])
        elif isinstance(names_tag, str) and names_tag:
            n_ch = len(names_tag.split("|"))
        else:
            raise self._error("cannot tell the number of channels: no ChannelInUseIndicators in the XML, no tag 33000")
        self.n_channels = n_ch
        self.channel_names = self._channel_names(in_use, names_tag)
        for obj, img in enumerate(self._images):
            if img.width % n_ch:
                raise self._error(
                    f"object {obj} (object number {obj_numbers[obj]}): plane width {img.width} does not split into "
                    f"{n_ch} channels"
                )
        self.shapes = np.array([(p.height, p.width // n_ch) for p in self._images], np.int64).reshape(-1, 2)
        expected = self._header.get(33018)
        if isinstance(expected, int) and expected != len(self._images):
            warnings.warn(
                f"{self.path}: the header announces {expected} objects (tag 33018) but the file holds "
                f"{len(self._images)} image/mask pairs",
                stacklevel=3,
            )

    def _parse_xml(self, text: Any, what: str) -> dict[str, Any]:
        if not isinstance(text, str) or not text.strip():
            return {}
        try:
            root = ET.fromstring(text.encode("latin-1", errors="replace"))
        except ET.ParseError as err:
            raise self._error(f"{what} is not well-formed XML ({err}); the file header is corrupted") from err
        parsed = _xml_to_dict(root)
        return parsed if isinstance(parsed, dict) else {}

    def _in_use_channels(self) -> list[int]:
        imaging = self._xml.get("Imaging", {})
        flags = next((v for k, v in imaging.items() if k.startswith("ChannelInUseIndicators")), None) if isinstance(imaging, dict) else None
        if not isinstance(flags, str):
            return []
        return [i for i, tok in enumerate(flags.split()) if tok == "1"]

    def _channel_names(self, in_use: list[int], names_tag: Any) -> list[str]:
        if isinstance(names_tag, str) and names_tag.strip("|"):
            names = names_tag.split("|")
            if len(names) == self.n_channels:
                return names
        display = self._xml.get("Display", {})
        numbers = [i + 1 for i in in_use] if in_use else list(range(1, self.n_channels + 1))
        out = []
        for num in numbers:
            name = display.get(f"Channel{num}Name") if isinstance(display, dict) else None
            out.append(name if isinstance(name, str) and name else f"Ch{num}")
        return out

    # -- metadata -----------------------------------------------------------------
    @property
    def metadata(self) -> dict[str, Any]:
        """File-wide metadata parsed from IFD 0 (computed once).

        Keys: ``channels`` (one dict per stored channel: ``name``,
        ``instrument_channel`` (1-based), ``brightfield`` from the acquisition's
        brightfield LED flags),
        ``channel_names``, ``channels_in_use`` (1-based instrument channels),
        ``magnification``, ``n_objects``, ``acquisition`` (time, date, operator,
        instrument, source ``.rif`` file, software version, lasers switched on
        and their power, brightfield LED, objects to acquire, core velocity),
        ``camera`` (bits per pixel, pixel size in micrometres from the
        instrument configuration), ``instrument`` (a few raw configuration
        values, e.g. ``ScatterChannel1``, not interpreted), ``xml`` (the whole acquisition XML as nested
        dicts of strings) and ``tags`` (the other Amnis tags of IFD 0 by number).
        """
        if self._metadata is None:
            self._metadata = self._build_metadata()
        return self._metadata

    def _build_metadata(self) -> dict[str, Any]:
        xml = self._xml
        imaging = xml.get("Imaging", {}) if isinstance(xml.get("Imaging"), dict) else {}
        illum = xml.get("Illumination", {}) if isinstance(xml.get("Illumination"), dict) else {}
        fluidics = xml.get("Fluidics", {}) if isinstance(xml.get("Fluidics"), dict) else {}
        in_use = self._in_use_channels() or list(range(self.n_channels))

        def flags(section: Mapping[str, Any], prefix: str) -> list[str]:
            v = next((val for k, val in section.items() if k.startswith(prefix)), "")
            return v.split() if isinstance(v, str) else []

        bf_led = flags(illum, "BfLedIndicators")
        bf_channels = {i for i, tok in enumerate(bf_led) if tok == "1"} if illum.get("BFOnOff", "1") != "0" else set()
        instrument_xml = self._header.get(_INSTRUMENT_XML_TAG)
        instrument_xml = instrument_xml if isinstance(instrument_xml, str) else ""

        def instrument_value(name: str) -> Any:
            m = re.search(rf"<{name}>([^<]*)</{name}>", instrument_xml)
            return _number(m.group(1).strip()) if m else None

        lasers = {}
        for key, value in illum.items():
            m = re.fullmatch(r"Ex(\w+?)SourcePowerOn", key)
            if m and value == "1":
                lasers[m.group(1)] = _number(illum.get(f"Ex{m.group(1)}SourceIntensityWatts"))
        channels = [
            {
                "name": name,
                "instrument_channel": idx + 1,
                "brightfield": idx in bf_channels,
            }
            for name, idx in zip(self.channel_names, in_use)
        ]
        date = None
        if self._images:
            entries, _ = self._ifd_entries(self._images[0].offset, "object 0 image IFD")
            date = self._tags(entries, (306,), "object 0 image IFD").get(306)
        descs = self._header.get(33008)
        return {
            "path": str(self.path),
            "n_objects": len(self),
            "n_objects_in_header": self._header.get(33018),
            "channel_names": list(self.channel_names),
            "channel_descriptions": descs.split("|") if isinstance(descs, str) and descs else None,
            "channels_in_use": [i + 1 for i in in_use],
            "channels": channels,
            "magnification": _number(imaging.get("Magnification")),
            "acquisition": {
                "time": self._header.get(33004),
                "date": date,
                "operator": self._header.get(33005),
                "instrument": self._header.get(33006),
                "source_rif": self._header.get(33026),
                "software_version": self._header.get(33066),
                "objects_to_acquire": _number(imaging.get("ObjectsToAcquire")),
                "core_velocity": _number(fluidics.get("CoreVelocity")),
                "brightfield_on": illum.get("BFOnOff") == "1",
                "lasers_on": lasers,
            },
            "camera": {
                "bits_per_pixel": instrument_value("CameraBitsPerPixel"),
                "pixel_size_um": instrument_value("CameraPixelSize"),
                "line_rate": _number(imaging.get("CameraLineRate")),
            },
            # instrument configuration values whose meaning the file does not spell out: kept raw
            "instrument": {
                "ScatterChannel1": instrument_value("ScatterChannel1"),
                "ScatterChannel2": instrument_value("ScatterChannel2"),
                "ChannelCount": instrument_value("ChannelCount"),
            },
            "xml": xml,
            "tags": {
                k: v for k, v in self._header.items() if k >= 33000 and k not in (_XML_TAG, _INSTRUMENT_XML_TAG)
            },
        }

    def instrument_settings(self) -> dict[str, Any]:
        """The instrument configuration XML (tag 33064, ~1.5 MB on an ImageStream 100) as nested dicts."""
        return self._parse_xml(self._header.get(_INSTRUMENT_XML_TAG), "instrument XML (tag 33064)")

    @property
    def stain_free(self) -> np.ndarray:
        """Per channel: brightfield according to the acquisition settings.

        Side scatter (darkfield) is not flagged: the acquisition XML does not say
        which channel collected it; pass ``stain_free=`` to :func:`load_cif` if you know.
        """
        return np.array([c["brightfield"] for c in self.metadata["channels"]], bool)

    def object_tags(self, index: int) -> dict[str, Any]:
        """All tags of object ``index``'s image IFD (Amnis tags by name where known, else by number)."""
        i = self._check_index(index)
        plane = self._images[i]
        entries, _ = self._ifd_entries(plane.offset, f"object {i} image IFD")
        tags = self._tags(entries, None, f"object {i} image IFD")
        return {CIF_TAG_NAMES.get(k, str(k)): v for k, v in tags.items()}

    # -- objects --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._images)

    def _check_index(self, index: Any) -> int:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"object index must be an int, got {type(index).__name__}")
        n = len(self)
        if not -n <= int(index) < n:
            raise IndexError(f"object {int(index)} out of range: {self.path} holds {n} objects")
        return int(index) % n

    def _plane_bytes(self, plane: _Plane, what: str) -> bytes:
        return b"".join(self._read(o, c, what) for o, c in plane.strips)

    def _decode(self, plane: _Plane, obj: int, kind: str) -> np.ndarray:
        what = f"object {obj} (object number {int(self.object_numbers[obj])}) {kind} (IFD {plane.ifd})"
        expected = GREYSCALE_COMPRESSION if kind == "image" else BITMASK_COMPRESSION
        if plane.compression != expected:
            raise self._error(
                f"{what} uses compression {plane.compression}; Amnis {kind}s use {expected} "
                f"({'greyscale' if kind == 'image' else 'bitmask'}). Unknown or damaged compression field."
            )
        data = self._plane_bytes(plane, what)
        try:
            if kind == "image":
                if not 1 <= plane.bits <= 32:
                    raise ValueError(f"{plane.bits} bits per sample is not supported")
                plane2d = decode_greyscale(data, plane.width, plane.height, bits=plane.bits)
            else:
                plane2d = decode_bitmask(data, plane.width, plane.height)
        except ValueError as err:
            raise self._error(f"{what} cannot be decoded: {err}. The file is truncated or corrupted.") from err
        c = self.n_channels
        w = plane.width // c
        return np.ascontiguousarray(plane2d.reshape(plane.height, c, w).transpose(1, 0, 2))

    def read_image(self, index: int) -> np.ndarray:
        """Image of object ``index`` as ``(C, H, W)`` raw integers (uint16)."""
        i = self._check_index(index)
        return self._decode(self._images[i], i, "image")

    def read_mask(self, index: int, *, raw: bool = False) -> np.ndarray:
        """Mask of object ``index`` as ``(C, H, W)`` bool (``raw=True``: the file's uint8 values)."""
        i = self._check_index(index)
        m = self._decode(self._masks[i], i, "mask")
        return m if raw else m != 0

    def read(self, index: int, *, raw_mask: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(image, mask)`` of object ``index``; see :meth:`read_image` and :meth:`read_mask`."""
        return self.read_image(index), self.read_mask(index, raw=raw_mask)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return self.read(int(key))
        if isinstance(key, slice):
            return [self.read(i) for i in range(*key.indices(len(self)))]
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean index must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise TypeError(f"index with an int, a slice, or a 1-D integer/bool array; got {key!r}")
        return [self.read(int(i)) for i in idx]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            yield self.read(i)

    # -- life cycle -------------------------------------------------------------------
    def close(self) -> None:
        """Close this process's file handle (reopened on the next read)."""
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = None
        self._pid = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown order varies
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - never raise from a finalizer
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_pid"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        if len(self):
            h, w = self.shapes.min(0), self.shapes.max(0)
            sizes = f"{h[0]}-{w[0]} x {h[1]}-{w[1]} px"
        else:
            sizes = "no objects"
        return f"CIFFile({str(self.path)!r}, {len(self)} objects, {self.n_channels} channels {self.channel_names}, {sizes})"


# ---------------------------------------------------------------------------
# CIF files as a lazy N x C x H x W array, and as an IFCDataset
# ---------------------------------------------------------------------------
class CIFImages:
    """Objects of one or more ``.cif`` files as a lazy ``N x C x H x W`` array.

    Every object is decoded when its row is read and centre-padded or
    centre-cropped to ``size`` (see :func:`~pxpermute.datasets.pad_or_crop`),
    so the array plugs into :class:`~pxpermute.datasets.IFCDataset` and the
    importance engine streams from the ``.cif`` files without converting them.

    Parameters
    ----------
    files : sequence of CIFFile or path-like
    size : int or (int, int)
        Target height and width.
    channels : sequence of int, optional
        Channel indices to keep, in this order (default: all).
    what : {"image", "mask"}
        Images (raw integers, or float32 with ``pad_mode="mean"``) or masks (bool).
    pad_mode, pad_value
        See :func:`~pxpermute.datasets.pad_or_crop` (masks always pad with False).

    Attributes
    ----------
    locations : np.ndarray, shape (N, 2)
        ``(file index, object index in that file)`` of every row.
    """

    def __init__(
        self,
        files: Sequence[CIFFile | str | os.PathLike],
        *,
        size: int | Sequence[int],
        channels: Sequence[int] | None = None,
        what: str = "image",
        pad_mode: str = "mean",
        pad_value: float = 0.0,
    ) -> None:
        if what not in ("image", "mask"):
            raise ValueError(f"what must be 'image' or 'mask', got {what!r}")
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {_PAD_MODES}, got {pad_mode!r}")
        self.files = [f if isinstance(f, CIFFile) else CIFFile(f) for f in files]
        if not self.files:
            raise ValueError("CIFImages needs at least one .cif file")
        n_ch = self.files[0].n_channels
        for f in self.files[1:]:
            if f.n_channels != n_ch:
                raise ValueError(f"{f.path} has {f.n_channels} channels but {self.files[0].path} has {n_ch}")
        self.channels = list(range(n_ch)) if channels is None else [int(c) for c in channels]
        if any(not 0 <= c < n_ch for c in self.channels):
            raise ValueError(f"channels {self.channels} out of range for {n_ch} channels")
        self.size = _target_hw(size)
        if self.size is None:
            raise ValueError("CIFImages needs a size: objects differ in size and are padded/cropped to one")
        self.what = what
        self.pad_mode = pad_mode
        self.pad_value = float(pad_value)
        self.locations = np.concatenate(
            [np.stack([np.full(len(f), k), np.arange(len(f))], 1) for k, f in enumerate(self.files)]
        ).astype(np.int64)
        self.shape = (len(self.locations), len(self.channels), self.size[0], self.size[1])
        self.ndim = 4
        if what == "mask":
            self.dtype = np.dtype(bool)
        else:
            self.dtype = np.dtype(np.float32) if pad_mode == "mean" else np.dtype(np.uint16)

    def __len__(self) -> int:
        return self.shape[0]

    def read_one(self, row: int) -> np.ndarray:
        """Row ``row`` as ``(C, H, W)`` at the target size."""
        k, i = self.locations[row]
        f = self.files[int(k)]
        if self.what == "image":
            arr = f.read_image(int(i))[self.channels]
            return pad_or_crop(arr, self.size, mode=self.pad_mode, value=self.pad_value)
        arr = f.read_mask(int(i))[self.channels]
        return pad_or_crop(arr, self.size, mode="constant", value=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        rows, squeeze = _normalize_rows(key, self.shape[0])
        if isinstance(rows, int):
            idx = np.array([rows])
        elif isinstance(rows, slice):
            idx = np.arange(rows.start, rows.stop)
        else:
            idx = rows
        out = np.empty((idx.size, *self.shape[1:]), self.dtype)
        for j, i in enumerate(idx):
            out[j] = self.read_one(int(i))
        if squeeze:
            return out[0][rest] if rest else out[0]
        return out[(slice(None),) + rest] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out.astype(dtype) if dtype is not None else out

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __repr__(self) -> str:
        return f"CIFImages({len(self.files)} files, {self.what}s, shape={self.shape}, pad_mode={self.pad_mode!r})"


def _source_files(source: Any) -> tuple[list[Path], list[str] | None, list[int] | None]:
    """(paths, class names from a mapping, class index per file)."""
    if isinstance(source, Mapping):
        if not source:
            raise ValueError("the class -> file mapping is empty")
        paths: list[Path] = []
        file_class: list[int] = []
        for k, (cls, value) in enumerate(source.items()):
            group = [value] if isinstance(value, (str, os.PathLike)) else list(value)
            if not group:
                raise ValueError(f"class {cls!r} has no files")
            paths += [Path(p) for p in group]
            file_class += [k] * len(group)
        return paths, [str(c) for c in source], file_class
    if isinstance(source, (str, os.PathLike, CIFFile)):
        source = [source]
    paths = [s.path if isinstance(s, CIFFile) else Path(s) for s in source]
    if not paths:
        raise ValueError("no .cif files given")
    return paths, None, None


def load_cif(
    source: str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, Any],
    *,
    size: int | Sequence[int] | None = None,
    channels: Sequence[int | str] | None = None,
    labels: Any = None,
    class_names: Sequence[str] | None = None,
    pad_mode: str = "mean",
    pad_value: float = 0.0,
    stain_free: Sequence[bool] | None = None,
    name: str | None = None,
) -> IFCDataset:
    """Open ``.cif`` files as a lazy :class:`~pxpermute.datasets.IFCDataset`.

    Parameters
    ----------
    source : path, list of paths, or mapping class name -> path(s)
        With a mapping every object of a class's files gets that class (one
        file per class, the usual way IFC experiments are exported from IDEAS);
        otherwise ``labels`` gives one label per object, in file order.
    size : int or (int, int), optional
        Centre-pad/crop every object to this size, as the published pipelines do
        (e.g. 64 for white blood cells, 128 for the synapse data).  Default:
        the smallest square holding every object (nothing is cropped).
    channels : sequence of str or int, optional
        Channels to keep (names such as ``"Ch1"`` or indices), in this order.
    labels : array-like, optional
        One label per object (ints or class-name strings) when ``source`` is
        not a mapping.  Without labels every object gets the single class
        ``"unlabelled"`` (enough to look at the data, not to rank channels).
    class_names : sequence of str, optional
        Class order (default: the mapping's keys or the sorted label strings).
    pad_mode : {"mean", "constant", "edge"}
        How to pad objects smaller than ``size`` (see
        :func:`~pxpermute.datasets.pad_or_crop`).  ``"mean"`` (default, as in
        the published synapse pipeline) fills with each channel's mean, so the
        padding does not draw a sharp frame whose size tells the object size;
        ``"constant"`` keeps the raw uint16 integers.
    pad_value : float
        Fill value for ``pad_mode="constant"``.
    stain_free : sequence of bool, optional
        Default: the brightfield channels according to the acquisition settings
        in the file (:attr:`CIFFile.stain_free`; darkfield is not recorded there).
    name : str, optional
        Data-set name (default: the file stem, or ``"cif"`` for several files).

    Returns
    -------
    IFCDataset
        ``images`` is a :class:`CIFImages` (nothing is decoded until read);
        ``images.locations`` maps rows to ``(file, object)``.

    Examples
    --------
    >>> ds = load_cif({"eos": "eosinophils.cif", "neu": "neutrophils.cif"}, size=64)  # doctest: +SKIP
    >>> ds = load_cif("example.cif", size=48, labels=my_labels, channels=["Ch1", "Ch5"])  # doctest: +SKIP
    """
    paths, mapping_classes, file_class = _source_files(source)
    files = [CIFFile(p) for p in paths]
    ref = files[0]
    for f in files[1:]:
        if f.channel_names != ref.channel_names:
            raise ValueError(
                f"{f.path} has channels {f.channel_names} but {ref.path} has {ref.channel_names}; "
                "all files of one data set need the same channels"
            )
    n_total = sum(len(f) for f in files)
    if n_total == 0:
        raise ValueError(f"the .cif files {[str(p) for p in paths]} hold no objects")
    ch = list(range(ref.n_channels)) if channels is None else resolve_channels(channels, ref.channel_names)
    if size is None:
        size = int(max(int(f.shapes.max()) for f in files if len(f)))
    if mapping_classes is not None:
        if labels is not None:
            raise ValueError("give either a class -> file mapping or labels, not both")
        lab = np.concatenate([np.full(len(f), c, np.int64) for f, c in zip(files, file_class)])
        names = mapping_classes
        if class_names is not None:
            if sorted(class_names) != sorted(names):
                raise ValueError(f"class_names {list(class_names)} must list the mapping's classes {names}")
            remap = np.array([list(class_names).index(c) for c in names])
            lab, names = remap[lab], list(class_names)
    elif labels is None:
        lab, names = np.zeros(n_total, np.int64), list(class_names) if class_names is not None else ["unlabelled"]
    else:
        lab, names = _encode_labels(labels, class_names)
        if lab.shape[0] != n_total:
            per_file = ", ".join(f"{f.path.name}: {len(f)}" for f in files)
            raise ValueError(f"{lab.shape[0]} labels for {n_total} objects ({per_file}); give one label per object")
    if stain_free is None:
        stain_free = ref.stain_free[ch]
    images = CIFImages(files, size=size, channels=ch, pad_mode=pad_mode, pad_value=pad_value)
    meta = ref.metadata
    provenance = {
        "source": "Amnis/Cytek .cif",
        "paths": [str(p) for p in paths],
        "magnification": meta["magnification"],
        "instrument": meta["acquisition"]["instrument"],
        "size": list(images.size),
        "pad_mode": pad_mode,
    }
    return IFCDataset(
        images,
        lab,
        channel_names=[ref.channel_names[c] for c in ch],
        class_names=names,
        stain_free=stain_free,
        provenance=provenance,
        name=name or (paths[0].stem if len(paths) == 1 else "cif"),
    )


def cif_to_hdf5(
    source: str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, Any],
    path: str | os.PathLike,
    *,
    masks: bool = True,
    overwrite: bool = False,
    chunk: int | None = None,
    compression: str | None = None,
    **load_kwargs: Any,
) -> Path:
    """Convert ``.cif`` files once into the package's HDF5 layout for repeated, fast use.

    Parameters
    ----------
    source
        As in :func:`load_cif`.
    path : path-like
        Output HDF5 file; read it back with :func:`~pxpermute.datasets.load_hdf5_dataset`.
    masks : bool
        Also store the masks (``masks``, bool ``N x C x H x W``).
    overwrite, chunk, compression
        See :func:`~pxpermute.datasets.write_hdf5_dataset`.
    **load_kwargs
        ``size``, ``channels``, ``labels``, ``class_names``, ``pad_mode``,
        ``pad_value``, ``stain_free`` as in :func:`load_cif`.

    Returns
    -------
    pathlib.Path
        Besides images and labels the file holds per object ``source_file`` and
        ``object_number`` and, as attributes, the channel/class names and the
        acquisition metadata (magnification, instrument, channels).

    Examples
    --------
    >>> cif_to_hdf5({"eos": "eos.cif", "neu": "neu.cif"}, "cells.h5", size=64)  # doctest: +SKIP
    >>> ds = load_hdf5_dataset("cells.h5")  # doctest: +SKIP
    """
    ds = load_cif(source, **load_kwargs)
    images: CIFImages = ds.images
    loc = images.locations
    src = np.array([str(images.files[int(k)].path) for k in loc[:, 0]], dtype=object)
    numbers = np.array([images.files[int(k)].object_numbers[int(i)] for k, i in loc], np.int64)
    meta = images.files[0].metadata
    out = write_hdf5_dataset(
        path,
        images,
        ds.labels,
        channel_names=ds.channel_names,
        class_names=ds.class_names,
        stain_free=ds.stain_free.tolist(),
        chunk=chunk,
        compression=compression,
        overwrite=overwrite,
        extra={"source_file": src, "object_number": numbers},
        attrs={
            "source": "Amnis/Cytek .cif",
            "cif_files": [str(f.path) for f in images.files],
            "magnification": meta["magnification"],
            "acquisition": {k: v for k, v in meta["acquisition"].items() if k != "lasers_on"},
            "channels": [meta["channels"][c] for c in images.channels],
            "pad_mode": images.pad_mode,
        },
    )
    if masks:
        import h5py

        mask_arr = CIFImages(images.files, size=images.size, channels=images.channels, what="mask")
        n = len(mask_arr)
        with h5py.File(out, "a") as fh:
            chunks = (max(1, min(n, 256)), *mask_arr.shape[1:]) if n else None
            dset = fh.create_dataset("masks", shape=mask_arr.shape, dtype=bool, chunks=chunks)
            for start in range(0, n, 1024):
                dset[start : start + 1024] = mask_arr[start : start + 1024]
    return out


def fetch_cif_example(*, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Path of the example ImageStream ``.cif`` (111 objects, 6 channels; BSD-3, nmichiels/cifDataset).

    Looked up in ``data_dir`` / ``$PXPERMUTE_DATA_DIR`` / pooch's cache as
    ``amnis_cif/example.cif`` and downloaded when allowed; the SHA-256 is checked.

    Examples
    --------
    >>> path = fetch_cif_example(download=False)  # doctest: +SKIP
    """
    return fetch_file(CIF_REGISTRY["example"], data_dir=data_dir, download=download)
