"""Decode speed of the .cif reader (objects per second), printed as JSON.

Times, best of ``--rounds`` passes over every object of the file:
  index     opening the file (walking the IFD chain, parsing the header)
  image     decode_greyscale alone on bytes already in memory
  mask      decode_bitmask alone on bytes already in memory
  object    CIFFile.read(i): file reads + both decoders + channel split (what users call)
  dataset   load_cif(...).get_batch over all objects at a fixed size (decode + pad/crop)
The file defaults to amnis_cif/example.cif below $PXPERMUTE_DATA_DIR. The load of the machine
(os.getloadavg) is reported with the numbers: on a shared machine the wall-clock rates are lower
bounds; rates per second of process CPU time are reported too (numpy runs single-threaded here).
Run:  python benchmarks/cif_decode.py [--path FILE.cif] [--rounds 5] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from pxpermute.datasets import CIFFile, load_cif
from pxpermute.datasets.cif import decode_bitmask, decode_greyscale, fetch_cif_example

CPU_TIMES: dict[str, float] = {}


def best(fn, rounds: int, name: str = "") -> float:
    """Best wall time of ``rounds`` calls; the best process CPU time goes to CPU_TIMES[name]."""
    times, cpu = [], []
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU_TIMES[name] = min(cpu)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", default=None, help="a .cif file (default: the example file via PXPERMUTE_DATA_DIR)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=64, help="pad/crop size for the dataset timing")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    path = args.path or str(fetch_cif_example(download=False))
    load_before = os.getloadavg()

    t_index = best(lambda: CIFFile(path).close(), args.rounds)
    f = CIFFile(path)
    n = len(f)
    grey = [(f._plane_bytes(p, "bench"), p.width, p.height) for p in f._images]
    masks = [(f._plane_bytes(p, "bench"), p.width, p.height) for p in f._masks]
    t_image = best(lambda: [decode_greyscale(d, w, h) for d, w, h in grey], args.rounds, "image")
    t_mask = best(lambda: [decode_bitmask(d, w, h) for d, w, h in masks], args.rounds, "mask")
    t_object = best(lambda: [f.read(i) for i in range(n)], args.rounds, "object")
    ds = load_cif(path, size=args.size)
    t_dataset = best(lambda: ds.get_batch(np.arange(n)), args.rounds, "dataset")
    pixels = int(sum(w * h for _, w, h in grey))
    result = {
        "benchmark": "cif_decode",
        "file": os.path.basename(path),
        "objects": n,
        "channels": f.n_channels,
        "mean_object_pixels_all_channels": pixels / n,
        "compressed_bytes_per_object": float(np.mean([len(d) for d, _, _ in grey]) + np.mean([len(d) for d, _, _ in masks])),
        "rounds": args.rounds,
        "index_seconds": t_index,
        "image_decode_objects_per_s": n / t_image,
        "mask_decode_objects_per_s": n / t_mask,
        "read_objects_per_s": n / t_object,
        "dataset_objects_per_s": n / t_dataset,
        "dataset_size": args.size,
        # objects per second of process CPU time: less sensitive to other processes on a busy machine
        "cpu_time_objects_per_s": {k: n / v for k, v in CPU_TIMES.items() if k and v > 0},
        "image_decode_megapixels_per_s": pixels / t_image / 1e6,
        "loadavg_before_after": [load_before[0], os.getloadavg()[0]],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
    }
    f.close()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
