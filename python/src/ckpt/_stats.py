"""Per-tensor statistics for a save (TensorStats on the wire): count, min, max,
mean, std (population), L2 norm over the finite elements, NaN and +-Inf counted
apart; what ``ckpt show --stats`` prints and the NaN/Inf guard checks.

Computed with torch on the tensor's own device (a GPU tensor on the GPU, before
its bytes are copied to the host), a few reductions per tensor. The C++ client
computes the same in its hashing pass; here it costs extra passes over memory, so
saves ask for it (``tensor_stats=True``, implied by ``reject_nonfinite=True``).
"""

import torch

from .v1 import checkpoint_pb2 as pb

_INF = float("inf")


def tensor_stats(t: torch.Tensor, out: pb.TensorStats) -> bool:
    """Fills ``out`` with the statistics of ``t``; False (``out`` untouched) for
    dtypes without them (complex)."""
    if t.is_complex():
        return False
    x = t.detach().reshape(-1)
    n = x.numel()
    out.count = n
    if n == 0:
        return True
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if x.is_floating_point():
        finite = torch.isfinite(x)
        n_finite = int(finite.sum())
        if n_finite < n:
            out.nan = int(torch.isnan(x).sum())
            out.pos_inf = int((x == _INF).sum())
            out.neg_inf = n - n_finite - out.nan - out.pos_inf
            x = x[finite]
            if n_finite == 0:
                return True
        if x.dtype in (torch.float16, torch.bfloat16) and x.device.type == "cpu":
            x = x.float()  # older CPU kernels lack half-precision reductions
    else:
        x = x.to(torch.float64)
    var, mean = torch.var_mean(x, unbiased=False)
    lo, hi = torch.aminmax(x)
    out.min = float(lo)
    out.max = float(hi)
    out.mean = float(mean)
    out.std = float(var) ** 0.5
    # sum(x^2) = n (var + mean^2): no pass of its own.
    out.l2 = (x.numel() * (float(var) + float(mean) ** 2)) ** 0.5
    return True
