"""Implicit differentiation through an equilibrium ``a* = f(a*; theta)``.

With ``z = f(a*; theta)`` computed once with autograd, the loss gradient with respect to
``theta`` is ``(dz/dtheta)^T g`` where ``g`` solves the adjoint system

    (I - J^T) g = dL/da*,     J = df/da at a*,

(implicit function theorem; Bai, Kolter & Koltun 2019; Xiao et al. 2021, eq. 8-10). Only
vector-Jacobian products ``v -> J^T v`` are needed. :func:`implicit` returns a tensor whose value
is ``a*`` and whose backward pass solves for ``g`` and sends it into ``z``'s graph.
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from .solvers import Reduce, SolverResult, solve

__all__ = ["implicit", "adjoint_solve", "jacobian_vjp"]


def jacobian_vjp(f_out: torch.Tensor, a_in: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> J^T v`` for ``f_out = f(a_in)`` already computed with ``a_in.requires_grad``."""

    def vjp(v: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(f_out, a_in, v, retain_graph=True)
        return g

    return vjp


def adjoint_solve(vjp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, solver: str = "broyden",
                  max_iter: int = 30, tol: float = 1e-4, strict: bool = False, warn: bool = True,
                  memory: Optional[int] = None, batched: bool = True,
                  reduce: Optional[Reduce] = None) -> SolverResult:
    """Solve ``(I - J^T) g = b``, i.e. ``g = J^T g + b``, from ``g0 = b``; residuals relative to ``||b||``
    (``reduce``: of all processes' samples, see :func:`~bioprop.equilibrium.solvers.solve`).

    Autocast is switched off for the solve: a backward pass run inside an autocast region would
    otherwise evaluate the vector-Jacobian products in bf16/fp16, whose rounding (about 1e-3)
    keeps the residual above any useful tolerance."""
    with torch.enable_grad(), torch.autocast(b.device.type, enabled=False):
        return solve(lambda g: vjp(g) + b, b.clone(), solver=solver, max_iter=max_iter, tol=tol,
                     strict=strict, warn=warn, what="adjoint system (I - J^T) g = dL/da", scale=b,
                     memory=memory, batched=batched, reduce=reduce)


class _Implicit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, a_star, vjp, options, log):  # type: ignore[override]
        ctx.vjp, ctx.options, ctx.log = vjp, options, log
        return a_star.detach().clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        r = adjoint_solve(ctx.vjp, grad, **ctx.options)
        if ctx.log is not None:
            ctx.log.append(r)
        return r.x.to(grad.dtype), None, None, None, None


def implicit(z: torch.Tensor, a_star: torch.Tensor, vjp: Callable[[torch.Tensor], torch.Tensor],
             solver: str = "broyden", max_iter: int = 30, tol: float = 1e-4, strict: bool = False,
             warn: bool = True, log: Optional[List[SolverResult]] = None,
             memory: Optional[int] = None, batched: bool = True, reduce: Optional[Reduce] = None) -> torch.Tensor:
    """Value ``a_star``; gradient: solve ``(I - J^T) g = dL/da*`` with ``vjp`` and back-propagate
    ``g`` through ``z = f(a_star; theta)``. Each solve's :class:`SolverResult` is appended to ``log``.

    ``vjp`` is typically :func:`jacobian_vjp` of ``f`` applied once more to a detached copy of
    ``a_star`` with the parameters held constant, so that the solve sees ``J = df/da`` only."""
    if z.shape != a_star.shape:
        raise ValueError(f"implicit: z {tuple(z.shape)} and a* {tuple(a_star.shape)} differ in shape")
    options = dict(solver=solver, max_iter=max_iter, tol=tol, strict=strict, warn=warn, memory=memory,
                   batched=batched, reduce=reduce)
    return _Implicit.apply(z, a_star, vjp, options, log)
