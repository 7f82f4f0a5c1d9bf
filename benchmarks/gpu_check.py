"""GPU checks run on a lent accelerator: counter-based permutations are identical on CPU and CUDA,
and the engine's result on CUDA matches the CPU result for a float64 model. Prints JSON."""
import json

import numpy as np
import torch

from pxpermute import channel_importance
from pxpermute.perturb import pixel_permutation, sample_permutation, seed_words

out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
s = seed_words(2024)
idx = torch.arange(1000)
reps = torch.arange(5)
p_cpu = pixel_permutation(s, idx, 3, reps, 32 * 32)
p_gpu = pixel_permutation(s, idx.cuda(), 3, reps.cuda(), 32 * 32).cpu()
out["pixel_permutation_equal_cpu_gpu"] = bool(torch.equal(p_cpu, p_gpu))
d_cpu = sample_permutation(s, idx, 2, reps, 1000)
d_gpu = sample_permutation(s, idx.cuda(), 2, reps.cuda(), 1000).cpu()
out["sample_permutation_equal_cpu_gpu"] = bool(torch.equal(d_cpu, d_gpu))


class Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3 * 64, 4, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.double().flatten(1) @ self.w


rng = np.random.default_rng(0)
X = rng.normal(size=(500, 3, 8, 8)).astype(np.float32)
y = rng.integers(0, 4, 500)
m = Lin()
r_cpu = channel_importance(m, (X, y), n_repeats=5, random_state=1, progress=False, device="cpu")
r_gpu = channel_importance(m, (X, y), n_repeats=5, random_state=1, progress=False, device="cuda")
out["engine_confusion_equal_cpu_gpu"] = bool(np.array_equal(r_cpu.confusion, r_gpu.confusion))
print(json.dumps(out))
