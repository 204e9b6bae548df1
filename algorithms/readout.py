"""The readout ``o = V h + c = R [h; 1]`` and its backward pass.

``R = readout: [o, n + 1]`` shared, or ``[B, o, n + 1]`` per stream; ``hb = [h; 1]: [B, n + 1]``.
Backward, for ``delta = dl/do [B, o]``: ``dl/dh = delta V [B, n]`` and
``dl/dR = delta [h; 1]^T`` (per stream ``[B, o, n + 1]``, or the mean over streams ``[o, n + 1]``
for a shared readout).

Per-stream products are written as broadcast multiply-and-sum, not ``bmm``: batched
matrix-vector products of small matrices are several times slower through ``bmm`` on the CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor


def output(readout: Tensor, hb: Tensor) -> Tensor:
    """``o [B, o]``."""
    if readout.dim() == 2:
        return torch.mm(hb, readout.t())
    return torch.linalg.vecdot(readout, hb.unsqueeze(1))


def backward(
    readout: Tensor, delta: Tensor, hb: Tensor, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(dl/dh [B, n], dl/dR)`` — the latter per stream or averaged, like ``readout``; a shared
    readout's gradient is written into ``out`` when given (a learner's buffer)."""
    n = hb.shape[1] - 1
    if readout.dim() == 2:
        dh = torch.mm(delta, readout[:, :n])
        grad = mean_outer(delta, hb, out)
    else:
        dh = torch.linalg.vecdot(readout[:, :, :n].mT, delta.unsqueeze(1))
        grad = delta.unsqueeze(2) * hb.unsqueeze(1)
    return dh, grad


def mean_outer(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``mean_b a_b b_b^T [r, c]`` over streams: ``a [B, r]``, ``b [B, c]``, into ``out`` when
    given. At one stream the broadcast product (the same values as ``mm``, and a loop Inductor
    fuses), else ``mm``."""
    if a.shape[0] == 1:
        return torch.mul(a.t(), b, out=out)
    return torch.mm(a.t(), b, out=out).div_(a.shape[0])


def reduce_streams(
    per_stream: Tensor, scale: Tensor, shared: bool, out: Tensor | None = None
) -> Tensor:
    """``scale_b * per_stream_b``: per stream ``[B, ...]``, or its mean over streams if ``shared``
    (written into ``out [numel / B]`` when given).

    ``per_stream [B, ...]``, ``scale [B]``; the shared case is one matrix-vector product.
    """
    batch = per_stream.shape[0]
    if shared:
        flat = per_stream.reshape(batch, -1)
        mean = torch.mv(flat.t(), scale, out=out)
        return (mean.div_(batch) if batch > 1 else mean).view(per_stream.shape[1:])
    return per_stream * scale.view((batch,) + (1,) * (per_stream.dim() - 1))
