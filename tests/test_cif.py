"""The .cif reader: the real ImageStream file, files written here in the same format, damaged copies.

The real file (``amnis_cif/example.cif`` below ``$PXPERMUTE_DATA_DIR``) is only read; every
damaged variant is a copy in ``tmp_path``.
"""
from __future__ import annotations

import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pxpermute.datasets import (
    CIFError,
    CIFFile,
    CIFImages,
    IFCDataset,
    cif_to_hdf5,
    load_cif,
    load_hdf5_dataset,
)
from pxpermute.datasets._download import DataIntegrityError
from pxpermute.datasets.cif import CIF_REGISTRY, decode_bitmask, decode_greyscale

REL = CIF_REGISTRY["example"].relpath


@pytest.fixture(scope="module")
def real_cif(real_file) -> Path:
    return real_file(REL)


@pytest.fixture
def cif_copy(real_cif, tmp_path) -> Path:
    dst = tmp_path / "copy.cif"
    shutil.copyfile(real_cif, dst)
    dst.chmod(0o644)
    return dst


# ---------------------------------------------------------------------------
# an independent, literal decoder (one pixel at a time, straight from the format description)
# ---------------------------------------------------------------------------
def literal_greyscale(data: bytes, width: int, height: int) -> np.ndarray:
    nibbles = []
    for b in data:
        nibbles += [b & 0x0F, b >> 4]
    it = iter(nibbles)
    img = np.zeros((height, width), np.int64)
    for y in range(height):
        for x in range(width):
            value, shift = 0, 0
            while True:
                nib = next(it)
                value += (nib & 7) << shift
                shift += 3
                if not nib & 8:
                    if nib & 4:
                        value -= 1 << shift
                    break
            up = img[y - 1, x] if y else 0
            left = img[y, x - 1] if x else 0
            upleft = img[y - 1, x - 1] if x and y else 0
            img[y, x] = value + up + left - upleft
    return img


# ---------------------------------------------------------------------------
# a small writer of the format (encoder + TIFF container), for files built from scratch
# ---------------------------------------------------------------------------
def encode_greyscale(plane: np.ndarray) -> bytes:
    p = plane.astype(np.int64)
    d = p.copy()
    d[1:, :] -= p[:-1, :]
    d[:, 1:] -= p[:, :-1]
    d[1:, 1:] += p[:-1, :-1]
    nibs: list[int] = []
    for v in d.ravel().tolist():
        n = 1
        while not -(4 * 8 ** (n - 1)) <= v < 4 * 8 ** (n - 1):
            n += 1
        for j in range(n):
            group = (v >> (3 * j)) & 7
            nibs.append(group | (8 if j < n - 1 else 0))
    if len(nibs) % 2:
        nibs.append(0)
    return bytes(lo | (hi << 4) for lo, hi in zip(nibs[0::2], nibs[1::2]))


def encode_bitmask(plane: np.ndarray) -> bytes:
    flat = plane.astype(np.uint8).ravel().tolist()
    out = bytearray()
    i = 0
    while i < len(flat):
        j = i
        while j + 1 < len(flat) and flat[j + 1] == flat[i] and j + 1 - i < 256:
            j += 1
        out += bytes([flat[i], j - i])
        i = j + 1
    return bytes(out)


XML = (
    '<?xml version="1.0" encoding="UTF-8" standalone="no" ?>\n<root><Imaging>'
    "<Magnification>{mag}</Magnification>"
    "<ChannelInUseIndicators_0_11>{inuse}</ChannelInUseIndicators_0_11></Imaging>"
    "<Illumination><BFOnOff>1</BFOnOff><BfLedIndicators_0_11>{bf}</BfLedIndicators_0_11></Illumination>"
    "<Display>{names}</Display></root>"
)


def write_cif(path: Path, objects, *, byteorder: str = "<", in_use=(0, 1, 2), names=None, brightfield=0,
              compressions=(30817, 30818)) -> Path:
    """Write ``objects`` (list of (image C x H x W, mask C x H x W)) as an Amnis-style .cif file."""
    bo = byteorder
    flags = ["0"] * 12
    for i in in_use:
        flags[i] = "1"
    bf = ["0"] * 12
    bf[in_use[brightfield]] = "1"
    disp = "".join(f"<Channel{i + 1}Name>{(names or {}).get(i, f'Ch{i + 1}')}</Channel{i + 1}Name>" for i in range(12))
    xml = XML.format(mag=60, inuse=" ".join(flags) + " ", bf=" ".join(bf) + " ", names=disp).encode()

    blob = bytearray(b"II*\x00" if bo == "<" else b"MM\x00*")
    blob += struct.pack(bo + "I", 8)

    def ifd(tags: list[tuple[int, int, list]]) -> int:
        """Append an IFD (tags: (tag, type, values)); returns the offset of its next-IFD field."""
        start = len(blob)
        n = len(tags)
        table_end = start + 2 + 12 * n + 4
        extra = bytearray()
        entries = bytearray(struct.pack(bo + "H", n))
        for tag, typ, values in sorted(tags):
            if typ == 2:
                raw = values + b"\x00"
                count = len(raw)
            else:
                code = {3: "H", 4: "I", 12: "d"}[typ]
                raw = struct.pack(bo + code * len(values), *values)
                count = len(values)
            if len(raw) <= 4:
                val = raw.ljust(4, b"\x00")
            else:
                val = struct.pack(bo + "I", table_end + len(extra))
                extra += raw + (b"\x00" if len(raw) % 2 else b"")
            entries += struct.pack(bo + "HHI", tag, typ, count) + val
        blob.extend(entries + b"\x00\x00\x00\x00" + extra)
        return start + 2 + 12 * n

    def strip_at() -> int:
        return len(blob)

    header_tags = [(256, 4, [1]), (257, 4, [1]), (258, 3, [16]), (259, 3, [1]), (273, 4, [0]), (279, 4, [0]),
                   (33002, 3, [1]), (33004, 2, b"12:00:00"), (33018, 4, [len(objects)]), (33027, 2, xml)]
    next_field = ifd(header_tags)
    for k, (image, mask) in enumerate(objects):
        c, h, w = image.shape
        for kind, plane, comp, bits in (
            (2, image, compressions[0], 16),
            (3, mask, compressions[1], 8),
        ):
            side = np.concatenate(list(plane), axis=1)  # channels side by side
            data = encode_greyscale(side) if kind == 2 else encode_bitmask(side)
            struct.pack_into(bo + "I", blob, next_field, len(blob))
            # reserve the strip offset: data is written right after this IFD
            tags = [(256, 4, [w * c]), (257, 4, [h]), (258, 3, [bits]), (259, 3, [comp]), (273, 4, [0]),
                    (279, 4, [len(data)]), (33002, 3, [kind]), (33003, 4, [100 + k])]
            start = len(blob)
            next_field = ifd(tags)
            data_off = strip_at()
            # patch the strip offset (entry index of tag 273 in the sorted table is 4)
            struct.pack_into(bo + "I", blob, start + 2 + 12 * 4 + 8, data_off)
            blob += data
    Path(path).write_bytes(bytes(blob))
    return Path(path)


def random_objects(n: int, c: int = 3, seed: int = 0, high: int = 1024):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = rng.integers(20, 40, size=2)
        img = rng.integers(0, high, size=(c, h, w)).astype(np.uint16)
        mask = np.zeros((c, h, w), np.uint8)
        mask[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = rng.integers(1, 3)
        out.append((img, mask))
    return out


# ---------------------------------------------------------------------------
# codecs
# ---------------------------------------------------------------------------
def test_codecs_round_trip_full_16_bit_range():
    rng = np.random.default_rng(1)
    for plane in (
        rng.integers(0, 65536, size=(7, 9)),  # residuals up to +-2^17: six-nibble values
        np.full((3, 4), 65535),
        np.zeros((2, 5), int),
        rng.integers(25, 60, size=(30, 41)),  # background-like: one nibble per value
    ):
        out = decode_greyscale(encode_greyscale(plane), plane.shape[1], plane.shape[0])
        assert out.dtype == np.uint16
        np.testing.assert_array_equal(out, plane)
    mask = rng.integers(0, 3, size=(11, 600)) * (rng.random((11, 600)) < 0.2)
    mask[3] = 1  # a run longer than 256 pixels
    np.testing.assert_array_equal(decode_bitmask(encode_bitmask(mask), 600, 11), mask)


def test_codecs_refuse_inconsistent_streams():
    good = encode_greyscale(np.arange(12).reshape(3, 4))
    with pytest.raises(ValueError, match="holds .* values"):
        decode_greyscale(good[:-2], 4, 3)
    with pytest.raises(ValueError, match="left after"):
        decode_greyscale(good + b"\x00\x00", 4, 3)
    with pytest.raises(ValueError, match="nibbles"):
        decode_greyscale(b"\xff" * 8 + good, 4, 3)
    with pytest.raises(ValueError, match="outside the declared"):
        decode_greyscale(bytes([0x04]), 2, 1)  # residuals -4, 0: negative pixels
    with pytest.raises(ValueError, match="runs cover"):
        decode_bitmask(bytes([0, 5]), 4, 1)
    with pytest.raises(ValueError, match="odd number"):
        decode_bitmask(bytes([0, 1, 1]), 2, 1)


# ---------------------------------------------------------------------------
# the real file
# ---------------------------------------------------------------------------
def test_real_file_structure_and_metadata(real_cif):
    with CIFFile(real_cif) as f:
        assert len(f) == 111
        assert f.n_channels == 6
        assert f.channel_names == ["Ch1", "Ch2", "Ch3", "Ch4", "Ch5", "Ch6"]
        assert f.shapes.shape == (111, 2)
        assert f.shapes.min() >= 30 and f.shapes.max() <= 60
        np.testing.assert_array_equal(f.object_numbers, np.arange(111))
        md = f.metadata
        assert md["magnification"] == 40
        assert md["channels_in_use"] == [1, 2, 3, 4, 5, 6]
        assert [c["name"] for c in md["channels"] if c["brightfield"]] == ["Ch5"]
        assert md["acquisition"]["instrument"] == "IS100-Lab"
        assert md["acquisition"]["software_version"] == "6.0.354.0"
        assert md["acquisition"]["source_rif"].endswith(".rif")
        assert md["camera"]["pixel_size_um"] == 0.5
        assert md["n_objects_in_header"] == 111
        assert md["xml"]["Imaging"]["Magnification"] == "40"
        np.testing.assert_array_equal(f.stain_free, [False, False, False, False, True, False])
        assert "111 objects" in repr(f)


def test_real_objects_decode_like_cells(real_cif):
    """Every object decodes; its border matches the background level the instrument stored per object."""
    with CIFFile(real_cif) as f:
        for i, (image, mask) in enumerate(f):
            h, w = f.shapes[i]
            assert image.shape == mask.shape == (6, h, w)
            assert image.dtype == np.uint16 and mask.dtype == bool
            border = np.concatenate([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], axis=1)
            stored = np.asarray(f.object_tags(i)["background_mean"])
            np.testing.assert_allclose(np.median(border, axis=1), stored, atol=3)
            bf = image[4].astype(float)  # brightfield: a bright background around a darker cell
            assert bf[~mask[4]].mean() > 150
            assert mask[4].sum() > 0.05 * h * w  # the cell is segmented in brightfield
            assert not mask[4, 0].all()


def test_real_objects_match_the_literal_decoder(real_cif):
    with CIFFile(real_cif) as f:
        for i in (0, 57, 110):
            plane = f._images[i]
            raw = f._plane_bytes(plane, "test")
            ref = literal_greyscale(raw, plane.width, plane.height)
            side = np.concatenate(list(f.read_image(i)), axis=1)
            np.testing.assert_array_equal(side, ref)


def test_indexing_slicing_iteration_pickle(real_cif):
    f = CIFFile(real_cif)
    img, _ = f[-1]
    np.testing.assert_array_equal(img, f[110][0])
    part = f[2:5]
    assert len(part) == 3 and all(np.array_equal(a[0], b[0]) for a, b in zip(part, [f[2], f[3], f[4]]))
    assert len(f[[0, 7]]) == 2
    assert len(f[np.arange(111) < 3]) == 3
    assert sum(1 for _ in f) == 111
    with pytest.raises(IndexError, match="111 objects"):
        f[111]
    raw = f.read_mask(0, raw=True)
    assert raw.dtype == np.uint8 and set(np.unique(raw)) <= {0, 1, 2, 3}
    g = pickle.loads(pickle.dumps(f))
    np.testing.assert_array_equal(g[9][0], f[9][0])
    f.close()
    np.testing.assert_array_equal(f[9][0], g[9][0])  # reopens after close
    g.close()


# ---------------------------------------------------------------------------
# files written here: both byte orders, names, several objects
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_written_files_round_trip(tmp_path, byteorder):
    objs = random_objects(5, c=3, seed=2, high=65536)
    path = write_cif(tmp_path / "w.cif", objs, byteorder=byteorder, in_use=(0, 5, 8), names={5: "DAPI"}, brightfield=0)
    with CIFFile(path) as f:
        assert f.byteorder == byteorder
        assert len(f) == 5 and f.channel_names == ["Ch1", "DAPI", "Ch9"]
        np.testing.assert_array_equal(f.object_numbers, 100 + np.arange(5))
        np.testing.assert_array_equal(f.stain_free, [True, False, False])
        for (img, mask), (ref_img, ref_mask) in zip(f, objs):
            np.testing.assert_array_equal(img, ref_img)
            np.testing.assert_array_equal(mask, ref_mask != 0)


# ---------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------
def test_truncated_file_names_file_and_object(real_cif, tmp_path):
    data = Path(real_cif).read_bytes()
    # inside object 0's pixels, between objects, inside the last mask, inside the header's XML
    for cut, where in ((1_539_500, "object 0"), (1_800_000, "object"), (len(data) - 100, "object 110"),
                       (len(data) // 2, "file header")):
        bad = tmp_path / f"cut{cut}.cif"
        bad.write_bytes(data[:cut])
        with pytest.raises(CIFError, match=r"truncated") as err:
            CIFFile(bad)
        assert str(bad) in str(err.value) and where in str(err.value)
    empty = tmp_path / "empty.cif"
    empty.write_bytes(b"")
    with pytest.raises(CIFError, match="not a TIFF"):
        CIFFile(empty)
    with pytest.raises(FileNotFoundError):
        CIFFile(tmp_path / "missing.cif")


def test_corrupted_pixel_data_raises_for_that_object_only(cif_copy):
    f = CIFFile(cif_copy)
    plane = f._images[5]
    off, count = plane.strips[0]
    f.close()
    with open(cif_copy, "r+b") as fh:  # 8 bytes of 0xFF: 16 nibbles that all say "more follows"
        fh.seek(off + count // 2)
        fh.write(b"\xff" * 8)
    g = CIFFile(cif_copy)
    with pytest.raises(CIFError, match=r"object 5 \(object number 5\) image") as err:
        g[5]
    assert str(cif_copy) in str(err.value)
    assert g[4][0].shape[0] == 6 and g[6][0].shape[0] == 6  # the neighbours still read
    # a mask whose runs no longer add up
    moff, _ = g._masks[7].strips[0]
    with open(cif_copy, "r+b") as fh:
        fh.seek(moff + 1)
        run = fh.read(1)[0]
        fh.seek(moff + 1)
        fh.write(bytes([run ^ 0x10]))
    g.close()
    with pytest.raises(CIFError, match=r"object 7 .*mask.*runs cover"):
        CIFFile(cif_copy)[7]


def test_corrupted_ifd_is_caught_at_open(cif_copy):
    f = CIFFile(cif_copy)
    ifd = f._images[3].offset
    f.close()
    data = bytearray(cif_copy.read_bytes())
    n = struct.unpack_from("<H", data, ifd)[0]
    for e in range(n):  # point the strip offset far beyond the end of the file
        tag = struct.unpack_from("<H", data, ifd + 2 + 12 * e)[0]
        if tag == 273:
            struct.pack_into("<I", data, ifd + 2 + 12 * e + 8, 0x7FFF0000)
    cif_copy.write_bytes(bytes(data))
    with pytest.raises(CIFError, match=r"IFD 7 \(object 3 image"):
        CIFFile(cif_copy)


def test_plain_tiff_is_refused(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.uint16))
    with pytest.raises(CIFError, match=r"not an Amnis \.cif") as err:
        CIFFile(path)
    assert str(path) in str(err.value)
    assert issubclass(CIFError, DataIntegrityError)


def test_missing_mask_ifd(cif_copy):
    f = CIFFile(cif_copy)
    img_ifd, mask_ifd = f._images[4].offset, f._masks[4].offset
    f.close()
    data = bytearray(cif_copy.read_bytes())
    n_img = struct.unpack_from("<H", data, img_ifd)[0]
    n_mask = struct.unpack_from("<H", data, mask_ifd)[0]
    after_mask = struct.unpack_from("<I", data, mask_ifd + 2 + 12 * n_mask)[0]
    struct.pack_into("<I", data, img_ifd + 2 + 12 * n_img, after_mask)  # skip object 4's mask
    cif_copy.write_bytes(bytes(data))
    with pytest.raises(CIFError, match=r"object 4 \(object number 4, image IFD 9\) has no mask IFD"):
        CIFFile(cif_copy)


def test_unknown_compression(cif_copy, tmp_path):
    f = CIFFile(cif_copy)
    ifd = f._images[3].offset
    f.close()
    data = bytearray(cif_copy.read_bytes())
    n = struct.unpack_from("<H", data, ifd)[0]
    for e in range(n):
        if struct.unpack_from("<H", data, ifd + 2 + 12 * e)[0] == 259:
            struct.pack_into("<H", data, ifd + 2 + 12 * e + 8, 5)  # LZW
    cif_copy.write_bytes(bytes(data))
    g = CIFFile(cif_copy)
    with pytest.raises(CIFError, match=r"object 3 .*compression 5"):
        g[3]
    assert g[2][0].shape[0] == 6
    g.close()
    # without the Amnis kind tag the IFD cannot even be paired: caught at open
    objs = random_objects(2, seed=3)
    path = write_cif(tmp_path / "odd.cif", objs, compressions=(7, 30818))
    raw = bytearray(path.read_bytes())
    raw = raw.replace(struct.pack("<HHI", 33002, 3, 1) + struct.pack("<H", 2), struct.pack("<HHI", 33001, 3, 1) + struct.pack("<H", 2))
    path.write_bytes(bytes(raw))
    with pytest.raises(CIFError, match=r"compression 7"):
        CIFFile(path)


# ---------------------------------------------------------------------------
# load_cif / CIFImages / conversion / the engine
# ---------------------------------------------------------------------------
def test_load_cif_mapping_and_labels(real_cif, cif_copy):
    ds = load_cif({"a": real_cif, "b": cif_copy}, size=48, channels=["Ch1", "Ch5"])
    assert isinstance(ds, IFCDataset) and isinstance(ds.images, CIFImages)
    assert len(ds) == 222 and ds.class_names == ["a", "b"]
    np.testing.assert_array_equal(ds.labels, np.repeat([0, 1], 111))
    assert ds.channel_names == ["Ch1", "Ch5"] and ds.stain_free.tolist() == [False, True]
    assert ds.images.shape == (222, 2, 48, 48) and ds.is_lazy
    x, y = ds.get_batch([0, 111, 5])
    assert x.shape == (3, 2, 48, 48) and x.dtype == np.float32 and y.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(x[0], x[1])  # the same object in both files
    # default size holds every object; constant padding keeps raw integers around the object
    with CIFFile(real_cif) as f:
        full = load_cif(real_cif, labels=np.arange(111) % 3, pad_mode="constant")
        side = int(f.shapes.max())
        assert full.image_shape == (6, side, side) and full.images.dtype == np.uint16
        h, w = f.shapes[0]
        top, left = (side - h) // 2, (side - w) // 2
        np.testing.assert_array_equal(full.images[0][:, top : top + h, left : left + w], f[0][0])
    with pytest.raises(ValueError, match="110 labels for 111 objects"):
        load_cif(real_cif, labels=np.zeros(110, int))
    with pytest.raises(ValueError, match="unknown channel name"):
        load_cif(real_cif, channels=["DAPI"])
    named = load_cif(real_cif, labels=["eos" if i % 2 else "neu" for i in range(111)], size=40)
    assert named.class_names == ["eos", "neu"]
    assert load_cif(real_cif).class_names == ["unlabelled"]


def test_cif_to_hdf5_matches_lazy_reading(real_cif, tmp_path):
    labels = np.arange(111) % 2
    ds = load_cif(real_cif, size=44, labels=labels, class_names=["x", "y"])
    out = cif_to_hdf5(real_cif, tmp_path / "cells.h5", size=44, labels=labels, class_names=["x", "y"])
    back = load_hdf5_dataset(out)
    assert back.class_names == ["x", "y"] and back.channel_names == ds.channel_names
    np.testing.assert_array_equal(back.stain_free, ds.stain_free)
    np.testing.assert_array_equal(back.as_arrays()[0], ds.as_arrays()[0])
    np.testing.assert_array_equal(back.labels, labels)
    import h5py

    with h5py.File(out) as fh:
        assert fh["masks"].shape == (111, 6, 44, 44) and fh["masks"].dtype == bool
        np.testing.assert_array_equal(fh["object_number"][()], np.arange(111))
        assert fh["masks"][0].sum() > 0
    with pytest.raises(FileExistsError):
        cif_to_hdf5(real_cif, out, size=44, labels=labels)


def test_channel_importance_runs_from_cif(real_cif):
    from pxpermute import channel_importance

    ds = load_cif(real_cif, size=32, channels=["Ch1", "Ch5", "Ch6"])

    class CentreContrast(torch.nn.Module):  # a fixed model: centre vs whole image, brightfield only
        def __init__(self, threshold: float = 0.0):
            super().__init__()
            self.threshold = threshold

        def forward(self, x):
            c = x[:, 1, 12:20, 12:20].mean(dim=(1, 2)) - x[:, 1].mean(dim=(1, 2)) - self.threshold
            return torch.stack([c, -c], dim=1)

    x_all = torch.from_numpy(ds.as_arrays()[0])
    contrast = CentreContrast()(x_all)[:, 0]
    model = CentreContrast(float(contrast.median()))
    labels = model(x_all).argmax(1).numpy()  # the model is right on every unpermuted object
    ds = load_cif(real_cif, size=32, channels=["Ch1", "Ch5", "Ch6"], labels=labels)
    res = channel_importance(model, ds, n_repeats=3, batch_size=50, random_state=0, progress=False)
    imp = np.asarray(res.importances_mean)
    assert imp.shape == (3,)
    assert imp[0] == 0 and imp[2] == 0  # channels the model ignores
    assert imp[1] > 0.2  # permuting brightfield pixels destroys the centre contrast
    # pickled (as DataLoader workers receive it) the lazy data set reads the same
    again = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(again.get_batch([3])[0], ds.get_batch([3])[0])
