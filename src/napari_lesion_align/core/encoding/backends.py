"""The array backends of the ridge solver: numpy (OpenBLAS; fastest on CPU here) and torch
(uses the GPU when ``device="cuda"``), each with its compute dtype and device.

The solver writes its products against the small interface these classes share (``asarray``,
``empty``, ``matmul``, column sums, centring, host copies, column gathers), so that one code
path runs on both.
"""

from __future__ import annotations

import numpy as np

from ..base.errors import LesionAlignError


class _NumpyBackend:
    name = "numpy"

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def asarray(self, x, dtype=None):
        return np.ascontiguousarray(x, dtype=dtype or self.dtype)

    def empty(self, shape):
        return np.empty(shape, dtype=self.dtype)

    def matmul(self, a, b, out=None):
        return np.matmul(a, b, out=out)

    def colsum_prod(self, a, b):
        """Column sums of ``a * b`` (no temporary of the full product)."""
        return np.einsum("ij,ij->j", a, b)

    def colsum_prod3(self, a, b):
        """``(k, m, n) x (k|1, m, n) -> (k, n)``: column sums of ``a[k] * b[k]`` per ``k``."""
        return np.einsum("aij,aij->aj", a, b) if b.ndim == 3 else np.einsum("aij,ij->aj", a, b)

    def to_numpy(self, x):
        return np.asarray(x, dtype=np.float64)

    def colstats64(self, x):
        """Column sums of ``x`` and ``x**2``, accumulated in float64."""
        return x.sum(0, dtype=np.float64), np.einsum("ij,ij->j", x, x, dtype=np.float64)

    def center(self, x, mean):
        """``x -= mean`` (per column, in place)."""
        np.subtract(x, mean.astype(x.dtype), out=x)

    def host(self, x):
        """A numpy array that shares memory with ``x`` (None when there is none)."""
        return x

    def copy_into(self, dst, src):
        dst[...] = src

    def index(self, idx):
        return np.asarray(idx)

    def take_cols(self, x, idx, out):
        return np.take(x, idx, axis=1, out=out)


class _TorchBackend:
    name = "torch"

    def __init__(self, dtype, device=None):
        import torch  # torch: for the torch backend only

        self.torch = torch
        self.dtype = {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}[
            np.dtype(dtype)
        ]
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    def asarray(self, x, dtype=None):
        t = self.torch
        if isinstance(x, t.Tensor):
            return x.to(device=self.device, dtype=self.dtype).contiguous()
        return t.as_tensor(np.ascontiguousarray(x), device=self.device).to(self.dtype).contiguous()

    def empty(self, shape):
        return self.torch.empty(shape, dtype=self.dtype, device=self.device)

    def matmul(self, a, b, out=None):
        return self.torch.matmul(a, b, out=out)

    def colsum_prod(self, a, b):
        return self.torch.einsum("ij,ij->j", a, b)

    def colsum_prod3(self, a, b):
        eq = "aij,aij->aj" if b.ndim == 3 else "aij,ij->aj"
        return self.torch.einsum(eq, a, b)

    def to_numpy(self, x):
        return x.detach().to("cpu", self.torch.float64).numpy()

    def colstats64(self, x):
        x64 = x.to(self.torch.float64)
        return x64.sum(0).cpu().numpy(), (x64 * x64).sum(0).cpu().numpy()

    def center(self, x, mean):
        x -= self.torch.as_tensor(mean, device=self.device).to(self.dtype)

    def host(self, x):
        return x.numpy() if x.device.type == "cpu" else None

    def copy_into(self, dst, src):
        if isinstance(src, np.ndarray):
            src = self.torch.from_numpy(np.ascontiguousarray(src))
        dst.copy_(src, non_blocking=False)

    def index(self, idx):
        return self.torch.as_tensor(np.asarray(idx), device=self.device)

    def take_cols(self, x, idx, out):
        return self.torch.index_select(x, 1, idx, out=out)


def get_backend(backend: str = "auto", dtype=np.float32, device=None):
    """Return a backend object.

    ``"auto"`` picks torch on a CUDA GPU when one is present and numpy otherwise (numpy's
    OpenBLAS runs float32 products about twice as fast as torch on these CPUs).
    """
    if backend == "auto":
        try:
            import torch  # torch: for the torch backend only

            backend = "torch" if torch.cuda.is_available() else "numpy"
        except ImportError:  # pragma: no cover - torch is a dependency
            backend = "numpy"
    if backend == "numpy":
        return _NumpyBackend(dtype)
    if backend == "torch":
        return _TorchBackend(dtype, device)
    raise LesionAlignError(f"unknown ridge backend {backend!r}; use 'auto', 'numpy' or 'torch'")
