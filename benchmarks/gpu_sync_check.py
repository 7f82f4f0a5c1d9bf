"""GPU check for issue 17 item 3 (run on a lent accelerator; prints JSON): the engine's hot path has no
device sync per forward pass, and CUDA results equal CPU results for every batch size.

* syncs: ``torch.cuda.set_sync_debug_mode("warn")`` makes every host-device synchronization emit a
  warning; the engine is run with k = 2 and k = 20 on the same data (10x the forward passes) and the
  warnings are counted.  With a sync-free hot path the two counts are equal (the remaining syncs are per
  run or per block of images: the finite-input check, the result read-back).
* identity: pixel and sample perturbations on CUDA with batch sizes 7, 64 and 500 give the CPU run's
  confusion matrices bit for bit (a float64 model, so the forward itself is exact enough to compare).

Run:  python benchmarks/gpu_sync_check.py   (then benchmarks/engine_overhead.py --device cuda [--amp]
      --before-after for the overhead targets: <= 1.10 fp32, <= 1.20 bf16 at 2x32x32 and 8x128x128)
"""
import json
import warnings

import numpy as np
import torch

from pxpermute import channel_importance


class Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3 * 64, 4, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.double().flatten(1) @ self.w


def n_syncs(model, X, y, k):
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            channel_importance(model, (X, y), n_repeats=k, batch_size=500, random_state=1, progress=False,
                               device="cuda")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in rec)


def main():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 500)
    m = Lin()
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    channel_importance(m, (X[:8], y[:8]), n_repeats=1, progress=False, device="cuda")  # warm-up
    out["syncs_k2"] = n_syncs(m, X, y, 2)
    out["syncs_k20"] = n_syncs(m, X, y, 20)
    out["syncs_do_not_grow_with_passes"] = out["syncs_k20"] == out["syncs_k2"]
    for pert in ("pixel", "sample"):
        ref = channel_importance(m, (X, y), n_repeats=5, perturbation=pert, random_state=1, progress=False,
                                 device="cpu")
        for bs in (7, 64, 500):
            r = channel_importance(m, (X, y), n_repeats=5, perturbation=pert, random_state=1, progress=False,
                                   device="cuda", batch_size=bs)
            out[f"{pert}_bs{bs}_equal_cpu"] = bool(np.array_equal(ref.confusion, r.confusion))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
