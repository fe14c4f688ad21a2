"""Fixed-point solvers for ``x = h(x)`` on batched tensors, reporting their residual.

All solvers treat ``x`` as ``[B, ...]``: each sample is its own problem (inner products are per
sample), and the reported residual is the relative residual of the whole batch,
``||h(x) - x|| / ||scale||`` over all samples (``scale`` defaults to ``h(x0)``; it is ``b`` for the
adjoint system below), plus the worst per-sample value. When the batch is split over processes
(``reduce``), "the whole batch" is every process's samples together.

They are used for IDE's adjoint system ``(I - J^T) g = b``, i.e. the fixed point
``g = J^T g + b``, which needs only vector-Jacobian products ``v -> J^T v``:

- :func:`fixed_point`: ``x <- h(x)``. Solves the *right* system; converges when the spectral
  radius of ``J`` is below 1. (The IDE reference's 'iter' solver, ``v <- (v + h(v)) / 2``,
  converges to the solution of ``(2 I - J^T) g = b``, a different system: not reproduced here.)
- :func:`anderson`: Anderson acceleration (type II, memory ``m``, mixing ``beta``; Walker & Ni 2011).
- :func:`broyden`: limited-memory "good" Broyden on ``G(x) = h(x) - x`` with the inverse Jacobian
  initialised to ``-I`` (as in DEQ, Bai et al. 2019, and the IDE reference), no line search.

No solver ever returns zeros on failure: each returns the iterate with the lowest residual and
says whether it met the tolerance; the caller decides (``solve`` warns or raises). The adjoint
solve starts from ``g0 = b`` (the Jacobian-free approximation of the implicit gradient), so a
failed solve degrades to that approximation or better, never to a zero gradient as the IDE
reference's Broyden does when it diverges.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

__all__ = ["SolverResult", "SolverError", "SolverWarning", "fixed_point", "anderson", "broyden", "solve",
           "SOLVERS"]

Fn = Callable[[torch.Tensor], torch.Tensor]
#: ``reduce(t, op)``: ``t`` summed (``op='sum'``) or maximised (``'max'``) over the processes that
#: each solve a part of the batch (:func:`bioprop.distributed.all_reduce`); ``None``: one process
Reduce = Callable[[torch.Tensor, str], torch.Tensor]


class SolverError(RuntimeError):
    """A fixed-point solve did not reach its tolerance and ``strict=True`` was requested."""


class SolverWarning(RuntimeWarning):
    """A fixed-point solve did not reach its tolerance (the result is the best iterate found)."""


@dataclass
class SolverResult:
    """``x``: the best iterate; ``residual``: its relative residual over the batch;
    ``max_residual``: the worst per-sample relative residual; ``iters``: h-evaluations used;
    ``converged``: ``residual <= tol``."""

    x: torch.Tensor
    residual: float
    max_residual: float
    iters: int
    converged: bool
    solver: str = ""


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


class _Tracker:
    """Keeps the lowest-residual iterate; residuals relative to ``||h(x0)||`` (batch and per sample).

    ``reduce``: the batch is split over processes (data-parallel training); the batch residual and
    the worst sample are then those of the whole batch (an all-reduce of the squared norms and of
    the maximum), so every process takes the same decisions (stop, keep the best iterate) at the
    same iteration as one process solving the whole batch; per-sample work is unchanged."""

    def __init__(self, ref: torch.Tensor, reduce: Optional[Reduce] = None):
        r = _flat(ref)
        self.reduce = reduce
        self.den = self._norm(r).clamp_min(1e-30)
        self.den_s = r.norm(dim=1).clamp_min(1e-30)
        self.best: Optional[torch.Tensor] = None
        self.best_res = math.inf
        self.best_max = math.inf
        # a non-finite scale (NaN/Inf in b or h(x0)) makes every relative residual meaningless
        # (an Inf scale would report 0): such a system is never reported converged
        self.finite_scale = bool(torch.isfinite(self.den))

    def _norm(self, g: torch.Tensor) -> torch.Tensor:
        if self.reduce is None:
            return g.norm()
        return self.reduce(g.pow(2).sum(), "sum").sqrt()

    def update(self, x: torch.Tensor, gx: torch.Tensor) -> float:
        g = _flat(gx)
        res = float(self._norm(g) / self.den)
        if not math.isfinite(res):
            return res
        if res < self.best_res:
            self.best_res = res
            worst = (g.norm(dim=1) / self.den_s).max()
            self.best_max = float(worst if self.reduce is None else self.reduce(worst, "max"))
            self.best = x.detach().clone()
        return res


def _result(tr: _Tracker, x0: torch.Tensor, iters: int, tol: float, name: str) -> SolverResult:
    x = tr.best if tr.best is not None else x0
    if not tr.finite_scale or tr.best is None:  # NaN/Inf system: no finite residual was ever seen
        return SolverResult(x, math.nan, math.nan, iters, False, name)
    return SolverResult(x, tr.best_res, tr.best_max, iters, tr.best_res <= tol, name)


@torch.no_grad()
def fixed_point(h: Fn, x0: torch.Tensor, max_iter: int = 30, tol: float = 1e-4,
                scale: Optional[torch.Tensor] = None, reduce: Optional[Reduce] = None) -> SolverResult:
    """Plain iteration ``x <- h(x)`` until ``||h(x) - x|| / ||scale|| <= tol`` (at most
    ``max_iter`` evaluations of ``h``; ``reduce``: residuals over all processes' samples)."""
    x = x0
    hx = h(x)
    tr = _Tracker(hx if scale is None else scale, reduce)
    k = 1
    while True:
        res = tr.update(x, hx - x)
        if res <= tol or not math.isfinite(res) or k >= max_iter:
            return _result(tr, x0, k, tol, "fixed_point")
        x = hx
        hx = h(x)
        k += 1


@torch.no_grad()
def anderson(h: Fn, x0: torch.Tensor, max_iter: int = 30, tol: float = 1e-4, m: int = 5,
             beta: float = 1.0, lam: float = 1e-4, scale: Optional[torch.Tensor] = None,
             reduce: Optional[Reduce] = None) -> SolverResult:
    """Anderson acceleration of ``x = h(x)`` (per sample), memory ``m``, mixing ``beta``,
    Tikhonov regularisation ``lam`` (relative to the mean squared residual of the history) of the
    small least-squares problem ``min ||sum_i alpha_i G_i||, sum_i alpha_i = 1``."""
    B = x0.shape[0]
    shape = x0.shape
    n = _flat(x0).shape[1]
    dt = x0.dtype
    X = torch.zeros(B, m, n, dtype=dt, device=x0.device)
    Fh = torch.zeros(B, m, n, dtype=dt, device=x0.device)
    X[:, 0] = _flat(x0)
    Fh[:, 0] = _flat(h(x0))
    tr = _Tracker(Fh[:, 0] if scale is None else scale, reduce)
    tr.update(X[:, 0].reshape(shape), Fh[:, 0] - X[:, 0])
    if tr.best_res <= tol or max_iter <= 1:
        return _result(tr, x0, 1, tol, "anderson")
    X[:, 1] = Fh[:, 0]
    Fh[:, 1] = _flat(h(Fh[:, 0].reshape(shape)))
    iters = 2
    res = tr.update(X[:, 1].reshape(shape), Fh[:, 1] - X[:, 1])
    Hm = torch.zeros(B, m + 1, m + 1, dtype=dt, device=x0.device)
    Hm[:, 0, 1:] = Hm[:, 1:, 0] = 1
    y = torch.zeros(B, m + 1, 1, dtype=dt, device=x0.device)
    y[:, 0] = 1
    for k in range(2, max_iter):
        if res <= tol or not math.isfinite(res):
            break
        nk = min(k, m)
        G = Fh[:, :nk] - X[:, :nk]
        GG = torch.bmm(G, G.transpose(1, 2))
        # Tikhonov term relative to the residuals' scale, so the solver is invariant to scaling b
        reg = lam * GG.diagonal(dim1=1, dim2=2).mean(1).clamp_min(torch.finfo(dt).tiny)
        Hm[:, 1:nk + 1, 1:nk + 1] = GG + reg[:, None, None] * torch.eye(nk, dtype=dt, device=x0.device)[None]
        alpha = torch.linalg.solve(Hm[:, :nk + 1, :nk + 1], y[:, :nk + 1])[:, 1:nk + 1, 0]
        xk = beta * (alpha[:, None] @ Fh[:, :nk])[:, 0] + (1 - beta) * (alpha[:, None] @ X[:, :nk])[:, 0]
        X[:, k % m] = xk
        Fh[:, k % m] = _flat(h(xk.reshape(shape)))
        iters += 1
        res = tr.update(xk.reshape(shape), Fh[:, k % m] - xk)
    return _result(tr, x0, iters, tol, "anderson")


class _ListHistory:
    """Broyden's rank-one updates as Python lists: ``H z = -z + sum_i u_i (v_i^T z)`` term by term
    (the plain reference; about 3 kernels per stored update and product)."""

    def __init__(self, x: torch.Tensor, memory: int):
        self.us: List[torch.Tensor] = []
        self.vts: List[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.us)

    def clear(self) -> None:
        self.us.clear()
        self.vts.clear()

    def append(self, u: torch.Tensor, vt: torch.Tensor) -> None:
        self.us.append(u)
        self.vts.append(vt)

    def matvec(self, z: torch.Tensor) -> torch.Tensor:  # H z, per sample
        out = -z
        for u, vt in zip(self.us, self.vts):
            out = out + u * (vt * z).sum(1, keepdim=True)
        return out

    def rmatvec(self, z: torch.Tensor) -> torch.Tensor:  # z^T H, per sample
        out = -z
        for u, vt in zip(self.us, self.vts):
            out = out + vt * (u * z).sum(1, keepdim=True)
        return out


class _BatchedHistory:
    """The same updates in preallocated ``[B, memory, n]`` buffers (the fast path; equal to
    :class:`_ListHistory` up to the order of summation).

    ``products``: how ``H z`` and ``z^T H`` are formed. ``bmm``: two batched matrix products,
    whatever the number of stored updates (2 kernels instead of ~3 per update: what pays on a GPU,
    where each product is launch-bound); ``loop``: term by term over the buffers with in-place
    ``addcmul`` (on the CPU a batched matrix-vector product is slower than the elementwise terms:
    F400, T = 5, batch 128: the bmm history took 41 ms a step against 22 ms for the list, so the
    default there is ``loop``); ``None``: ``bmm`` on CUDA, ``loop`` elsewhere."""

    def __init__(self, x: torch.Tensor, memory: int, products: Optional[str] = None):
        B, n = x.shape
        if products is None:
            products = "bmm" if x.device.type == "cuda" else "loop"
        if products not in ("bmm", "loop"):
            raise ValueError(f"unknown products {products!r}; choose bmm or loop")
        self.products = products
        # bmm: [B, memory, n] (one matrix per sample); loop: [memory, B, n] (each update contiguous)
        shape = (B, memory, n) if products == "bmm" else (memory, B, n)
        self.U = torch.empty(shape, dtype=x.dtype, device=x.device)
        self.VT = torch.empty(shape, dtype=x.dtype, device=x.device)
        self.k = 0

    def __len__(self) -> int:
        return self.k

    def clear(self) -> None:
        self.k = 0

    def append(self, u: torch.Tensor, vt: torch.Tensor) -> None:
        if self.products == "bmm":
            self.U[:, self.k] = u
            self.VT[:, self.k] = vt
        else:
            self.U[self.k] = u
            self.VT[self.k] = vt
        self.k += 1

    def _apply(self, left: torch.Tensor, right: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.k == 0:
            return -z
        if self.products == "loop":
            out = -z
            for i in range(self.k):
                out.addcmul_(left[i], (right[i] * z).sum(1, keepdim=True))
            return out
        coef = torch.bmm(right[:, :self.k], z.unsqueeze(2))                        # [B, k, 1]
        return torch.baddbmm(-z.unsqueeze(2), left[:, :self.k].transpose(1, 2), coef).squeeze(2)

    def matvec(self, z: torch.Tensor) -> torch.Tensor:
        return self._apply(self.U, self.VT, z)

    def rmatvec(self, z: torch.Tensor) -> torch.Tensor:
        return self._apply(self.VT, self.U, z)


@torch.no_grad()
def broyden(h: Fn, x0: torch.Tensor, max_iter: int = 30, tol: float = 1e-4, memory: int = 30,
            scale: Optional[torch.Tensor] = None, batched: bool = True,
            reduce: Optional[Reduce] = None) -> SolverResult:
    """Limited-memory good Broyden on ``G(x) = h(x) - x`` (per sample).

    The inverse Jacobian estimate is ``H = -I + sum_i u_i v_i^T``; each step ``x <- x - H G(x)``
    and the rank-one update ``H += (dx - H dG) (dx^T H) / (dx^T H dG)``. At most ``memory``
    updates are kept; when the history is full it restarts from ``H = -I``. ``batched``: keep the
    updates in preallocated buffers (default), applied with batched matrix products on CUDA and
    term by term in place on the CPU, whichever is faster there (:class:`_BatchedHistory`);
    ``False``: the plain term-by-term lists (the reference path, tested equal).
    """
    shape = x0.shape

    def G(x: torch.Tensor) -> torch.Tensor:
        return _flat(h(x.reshape(shape))) - x

    x = _flat(x0).clone()
    gx = G(x)
    tr = _Tracker(gx + x if scale is None else scale, reduce)  # default: h(x0)
    res = tr.update(x.reshape(shape), gx)
    iters = 1
    hist = (_BatchedHistory if batched else _ListHistory)(x, min(memory, max(1, max_iter)))
    update = -hist.matvec(gx)
    while iters < max_iter and res > tol and math.isfinite(res):
        dx = update
        x = x + dx
        gx_new = G(x)
        iters += 1
        res = tr.update(x.reshape(shape), gx_new)
        dg = gx_new - gx
        gx = gx_new
        if len(hist) >= memory:  # history full: restart from H = -I (dropping only the oldest
            hist.clear()         # update instead can stall the iteration)
        vt = hist.rmatvec(dx)
        den = (vt * dg).sum(1, keepdim=True)
        ok = den.abs() > 1e-30
        u = torch.where(ok, (dx - hist.matvec(dg)) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(dx))
        hist.append(u, vt)
        update = -hist.matvec(gx)
    return _result(tr, x0, iters, tol, "broyden")


SOLVERS = {"broyden": broyden, "anderson": anderson, "fixed_point": fixed_point}


def solve(h: Fn, x0: torch.Tensor, solver: str = "broyden", max_iter: int = 30, tol: float = 1e-4,
          strict: bool = False, warn: bool = True, what: str = "fixed point",
          scale: Optional[torch.Tensor] = None, memory: Optional[int] = None, batched: bool = True,
          reduce: Optional[Reduce] = None) -> SolverResult:
    """Run ``solver`` on ``x = h(x)``; if it misses ``tol``, raise :class:`SolverError` when
    ``strict`` else (when ``warn``) issue a :class:`SolverWarning` naming the residual.

    ``memory``: the history length of Broyden (rank-one updates kept) or Anderson (``m``);
    ignored by plain iteration; ``None`` keeps each solver's default (Broyden 30, Anderson 5).
    ``batched``: Broyden's history in batched buffers (``False``: the plain reference loop).
    ``reduce``: the batch is split over processes (data-parallel training): the residuals, hence
    the stopping decision and the choice of the best iterate, are the whole batch's
    (:class:`_Tracker`), so each process returns its rows of the single-process solution and all
    evaluate ``h`` equally often (``h`` may itself communicate, e.g. synchronised BatchNorm)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    opts = {"batched": bool(batched)} if solver == "broyden" else {}
    if memory is not None:
        if memory < 1:
            raise ValueError(f"memory must be >= 1, got {memory}")
        if solver == "broyden":
            opts["memory"] = int(memory)
        elif solver == "anderson":
            opts["m"] = max(2, int(memory))
    if reduce is not None:
        opts["reduce"] = reduce
    r = SOLVERS[solver](h, x0, max_iter=max_iter, tol=tol, scale=scale, **opts)
    if not r.converged:
        if not math.isfinite(r.residual):
            msg = (f"{solver} solve of the {what}: the system holds NaN/Inf values (no finite residual in "
                   f"{r.iters} iterations); check the input data and lower the learning rate.")
        else:
            msg = (f"{solver} solve of the {what} did not converge: relative residual {r.residual:.3g} "
                   f"(worst sample {r.max_residual:.3g}) after {r.iters} iterations, tolerance {tol:g}. "
                   + ("" if strict else "The best iterate is used. ")
                   + "Raise max_iter, try another solver, or check that the "
                   "equilibrium map is contractive (e.g. feedback norm below the threshold).")
        if strict:
            raise SolverError(msg)
        if warn:
            warnings.warn(msg, SolverWarning, stacklevel=2)
    return r
