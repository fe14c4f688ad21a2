"""Solvers against a dense solve; failures reported, never zeroed; implicit gradients."""

import warnings

import pytest
import torch

from bioprop.equilibrium import SolverError, SolverWarning, adjoint_solve, implicit, jacobian_vjp, solve


def _contractive(n=12, B=3, rho=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(B, n, n, generator=g, dtype=torch.float64)
    J = J / torch.linalg.matrix_norm(J, ord=2)[:, None, None] * rho  # ||J_b|| = rho per sample
    b = torch.randn(B, n, generator=g, dtype=torch.float64)
    return J, b


@pytest.mark.parametrize("solver", ["broyden", "anderson", "fixed_point"])
def test_every_solver_agrees_with_dense_solve(solver):
    J, b = _contractive()
    vjp = lambda v: torch.einsum("bij,bi->bj", J, v)  # J^T v per sample  # noqa: E731
    dense = torch.linalg.solve(torch.eye(12, dtype=torch.float64) - J.transpose(1, 2), b)
    r = adjoint_solve(vjp, b, solver=solver, max_iter=200, tol=1e-12, strict=True)
    assert r.converged and r.residual <= 1e-12
    assert float((r.x - dense).norm() / dense.norm()) < 1e-10


def test_broyden_is_faster_than_plain_iteration():
    J, b = _contractive(rho=0.95)
    vjp = lambda v: torch.einsum("bij,bi->bj", J, v)  # noqa: E731
    rb = adjoint_solve(vjp, b, solver="broyden", max_iter=200, tol=1e-8)
    rf = adjoint_solve(vjp, b, solver="fixed_point", max_iter=400, tol=1e-8)
    assert rb.converged and rf.converged and rb.iters < rf.iters


def test_divergent_solve_is_reported_not_zeroed():
    J, b = _contractive(rho=3.0)  # not contractive: fixed-point iteration diverges
    vjp = lambda v: torch.einsum("bij,bi->bj", J, v)  # noqa: E731
    for solver in ("broyden", "anderson", "fixed_point"):
        with pytest.warns(SolverWarning, match="did not converge: relative residual"):
            r = adjoint_solve(vjp, b, solver=solver, max_iter=5, tol=1e-10)
        assert not r.converged and r.residual > 1e-10
        # the best iterate, at worst the Jacobian-free start g0 = b: never a silent zero
        assert r.x.abs().sum() > 0.5 * b.abs().sum()
        with pytest.raises(SolverError, match="residual"):
            adjoint_solve(vjp, b, solver=solver, max_iter=5, tol=1e-10, strict=True)


def test_not_iter_half_step_system():
    """Plain iteration solves (I - J^T) g = b, not the reference 'iter' solver's (2I - J^T) g = b."""
    J, b = _contractive(rho=0.5)
    vjp = lambda v: torch.einsum("bij,bi->bj", J, v)  # noqa: E731
    r = adjoint_solve(vjp, b, solver="fixed_point", max_iter=200, tol=1e-13)
    I = torch.eye(12, dtype=torch.float64)
    assert torch.allclose(torch.einsum("ij,bj->bi", I, r.x) - torch.einsum("bij,bi->bj", J, r.x), b, atol=1e-11)
    wrong = torch.linalg.solve(2 * I - J.transpose(1, 2), b)
    assert (r.x - wrong).norm() > 1e-3


def test_solve_fixed_point_of_nonlinear_map():
    torch.manual_seed(0)
    W = torch.randn(6, 6, dtype=torch.float64) * 0.2
    c = torch.randn(2, 6, dtype=torch.float64)
    h = lambda a: torch.tanh(a @ W.T + c)  # noqa: E731
    for s in ("broyden", "anderson", "fixed_point"):
        r = solve(h, torch.zeros(2, 6, dtype=torch.float64), solver=s, max_iter=100, tol=1e-12)
        assert torch.allclose(h(r.x), r.x, atol=1e-10)
    with pytest.raises(ValueError, match="unknown solver"):
        solve(h, torch.zeros(2, 6), solver="newton")


def test_implicit_gradient_of_smooth_equilibrium_equals_dense_and_unrolled():
    """a* = tanh(W a* + U x): implicit grads == dense (I - J^T)^-1 == autograd through 300 iterations."""
    torch.manual_seed(1)
    W = (torch.randn(5, 5, dtype=torch.float64) * 0.25).requires_grad_()
    U = torch.randn(5, 3, dtype=torch.float64).requires_grad_()
    x = torch.randn(4, 3, dtype=torch.float64)
    f = lambda a: torch.tanh(a @ W.T + x @ U.T)  # noqa: E731
    with torch.no_grad():
        a = torch.zeros(4, 5, dtype=torch.float64)
        for _ in range(400):
            a = f(a)
    a0 = a.clone().requires_grad_()
    fa = f(a0)
    out = implicit(f(a), a, jacobian_vjp(fa, a0), max_iter=100, tol=1e-13, strict=True)
    loss = (out ** 3).sum()
    gW, gU = torch.autograd.grad(loss, (W, U))
    # dense
    s = 1 - fa.detach() ** 2
    dLda = 3 * a ** 2
    gW_d = torch.zeros_like(W)
    gU_d = torch.zeros_like(U)
    for i in range(4):
        Ji = s[i][:, None] * W.detach()
        gi = torch.linalg.solve(torch.eye(5, dtype=torch.float64) - Ji.T, dLda[i])
        gW_d += torch.outer(s[i] * gi, a[i])
        gU_d += torch.outer(s[i] * gi, x[i])
    assert float((gW - gW_d).norm() / gW_d.norm()) < 1e-9
    assert float((gU - gU_d).norm() / gU_d.norm()) < 1e-9
    # unrolled
    a_u = torch.zeros(4, 5, dtype=torch.float64)
    for _ in range(300):
        a_u = f(a_u)
    gW_u, gU_u = torch.autograd.grad((a_u ** 3).sum(), (W, U))
    assert float((gW - gW_u).norm() / gW_u.norm()) < 1e-8
    assert float((gU - gU_u).norm() / gU_u.norm()) < 1e-8


@pytest.mark.parametrize("solver", ["broyden", "anderson", "fixed_point"])
def test_solvers_are_invariant_to_the_scale_of_b(solver):
    """dL/da is tiny for a batch-mean loss (~1e-3 per sample): a solver whose regularisation
    is absolute (as DEQ's Anderson's is) would need more iterations there than at scale 1."""
    g = torch.Generator().manual_seed(0)
    J = torch.randn(4, 50, 50, generator=g, dtype=torch.float64)
    J = J / torch.linalg.matrix_norm(J, ord=2)[:, None, None] * 0.95
    b = torch.randn(4, 50, generator=g, dtype=torch.float64)
    vjp = lambda v: torch.einsum("bij,bi->bj", J, v)  # noqa: E731
    runs = [adjoint_solve(vjp, b * s, solver=solver, max_iter=100, tol=1e-8, strict=True) for s in (1.0, 1e-6)]
    assert runs[0].iters == runs[1].iters
    torch.testing.assert_close(runs[1].x / 1e-6, runs[0].x, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("solver", ["broyden", "anderson", "fixed_point"])
def test_budget_and_memory_are_respected(solver):
    J, b = _contractive(rho=0.99)
    calls = [0]

    def vjp(v):
        calls[0] += 1
        return torch.einsum("bij,bi->bj", J, v)

    for max_iter in (1, 2, 7):
        calls[0] = 0
        r = adjoint_solve(vjp, b, solver=solver, max_iter=max_iter, tol=1e-14, warn=False)
        assert r.iters == calls[0] <= max_iter and not r.converged
    r = adjoint_solve(vjp, b, solver=solver, max_iter=300, tol=1e-10, memory=3, strict=True)
    assert r.converged
    with pytest.raises(ValueError, match="memory"):
        adjoint_solve(vjp, b, solver=solver, memory=0)


def test_adjoint_solve_ignores_autocast():
    """A backward pass inside an autocast region would run the VJPs in bf16; the solve must not."""
    torch.manual_seed(0)
    W = torch.randn(40, 40) / 15
    a = torch.rand(4, 40, requires_grad=True)
    fa = torch.nn.functional.linear(a, W)
    b = torch.randn(4, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = adjoint_solve(jacobian_vjp(fa, a), b, solver="broyden", max_iter=60, tol=1e-6, strict=True)
    dense = torch.linalg.solve(torch.eye(40) - W.T, b.T).T  # J = W: g = J^T g + b
    assert float((r.x - dense).norm() / dense.norm()) < 1e-5


@pytest.mark.parametrize("memory", [30, 4])
def test_batched_broyden_equals_the_plain_loop(memory):
    """The fast path's batched history gives the iterates of the term-by-term reference loop
    (memory 4 exercises the restarts); a nonsymmetric, barely contractive system needs many steps."""
    J, b = _contractive(n=40, B=3, rho=0.97, seed=3)
    vjp = lambda v: torch.einsum("bij,bi->bj", J, v)  # noqa: E731
    runs = [adjoint_solve(vjp, b, solver="broyden", max_iter=25, tol=1e-14, memory=memory, batched=bt, warn=False)
            for bt in (False, True)]
    ref, fast = runs
    assert ref.iters == fast.iters == 25
    assert abs(ref.residual - fast.residual) <= 1e-12  # both relative to ||b||
    assert float((ref.x - fast.x).norm() / ref.x.norm()) < 1e-10
    # and it is a real solve: the residual fell by orders of magnitude from g0 = b
    assert ref.residual < 1e-3


@pytest.mark.parametrize("products", ["bmm", "loop"])
def test_batched_history_products_equal_the_list_history(products):
    """Both ways of applying the batched buffers (bmm: the CUDA default; loop: the CPU default)
    give H z and z^T H of the term-by-term lists, with H = -I + sum_i u_i v_i^T per sample."""
    from bioprop.equilibrium.solvers import _BatchedHistory, _ListHistory

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(3, 7, dtype=torch.float64)
    lst, bat = _ListHistory(x, 5), _BatchedHistory(x, 5, products=products)
    assert bat.products == products
    z = torch.randn(3, 7, generator=g, dtype=torch.float64)
    for _ in range(4):
        u, vt = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
        lst.append(u, vt)
        bat.append(u, vt)
        torch.testing.assert_close(bat.matvec(z), lst.matvec(z), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(bat.rmatvec(z), lst.rmatvec(z), rtol=1e-13, atol=1e-13)
    H = -torch.eye(7, dtype=torch.float64) + sum(torch.einsum("bi,bj->bij", u, v) for u, v in zip(lst.us, lst.vts))
    torch.testing.assert_close(bat.matvec(z), torch.einsum("bij,bj->bi", H, z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bat.rmatvec(z), torch.einsum("bi,bij->bj", z, H), rtol=1e-12, atol=1e-12)
    assert _BatchedHistory(x, 5).products == "loop"  # the CPU default: the faster products there
