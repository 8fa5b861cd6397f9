"""Meta-gradient machinery: CG vs a direct solve, implicit vs unrolled vs finite differences."""

from __future__ import annotations

import numpy as np
import torch

from training import bilevel


def test_cg_solves_a_known_spd_system():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 20))
    spd = a @ a.T + 20 * np.eye(20)
    b = rng.normal(size=20)
    m = torch.tensor(spd)
    result = bilevel.conjugate_gradient(lambda v: m @ v, torch.tensor(b), n_iter=100, tol=1e-12)
    np.testing.assert_allclose(result.x.numpy(), np.linalg.solve(spd, b), rtol=1e-8, atol=1e-10)
    assert result.relative_residual < 1e-10


def test_cg_stops_on_negative_curvature_without_blowing_up():
    m = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    result = bilevel.conjugate_gradient(lambda v: m @ v, torch.tensor([0.0, 1.0]).double(), 10)
    assert result.iterations == 0 and torch.all(result.x == 0)


def _problem(seed: int = 0):
    """Ridge regression whose labels mix two sources through a gate sigmoid(Z phi), methods §5.2."""
    g = torch.Generator().manual_seed(seed)
    n, d, e = 40, 5, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = torch.randn(n, e, generator=g, dtype=torch.float64)
    y_teacher = torch.randn(n, generator=g, dtype=torch.float64)
    y_target = torch.randn(n, generator=g, dtype=torch.float64)
    x_up = torch.randn(30, d, generator=g, dtype=torch.float64)
    y_up = torch.randn(30, generator=g, dtype=torch.float64)
    phi = [torch.randn(e, generator=g, dtype=torch.float64).requires_grad_(True)]

    def lower(theta, phi_):
        w = torch.sigmoid(z @ phi_[0])
        label = w * y_teacher + (1 - w) * y_target
        return ((x @ theta[0] - label) ** 2).mean() + 0.1 * (theta[0] ** 2).sum()

    def upper(theta):
        return ((x_up @ theta[0] - y_up) ** 2).mean()

    def theta_star(phi_vec):
        w = torch.sigmoid(z @ phi_vec)
        label = w * y_teacher + (1 - w) * y_target
        a = x.T @ x / n + 0.1 * torch.eye(d, dtype=torch.float64)
        return torch.linalg.solve(a, x.T @ label / n)

    return lower, upper, phi, theta_star, d


def test_implicit_meta_gradient_matches_unrolled_and_finite_differences():
    lower, upper, phi, theta_star, d = _problem()
    star = [theta_star(phi[0].detach()).requires_grad_(True)]
    (g_up,) = torch.autograd.grad(upper(star), star)
    g_imp, cg = bilevel.implicit_meta_grad(lower, [g_up], star, phi, n_cg=50, damping=0.0)
    assert cg.relative_residual < 1e-8
    theta0 = [torch.zeros(d, dtype=torch.float64)]
    g_unr = bilevel.unrolled_meta_grad(lower, upper, theta0, phi, steps=400, lr=0.3)
    torch.testing.assert_close(g_imp[0], g_unr[0], rtol=1e-5, atol=1e-8)
    # and both equal the finite difference of the exact bilevel objective
    fd = torch.zeros_like(phi[0])
    for i in range(len(fd)):
        e = torch.zeros_like(fd)
        e[i] = 1e-6
        plus = upper([theta_star(phi[0].detach() + e)])
        minus = upper([theta_star(phi[0].detach() - e)])
        fd[i] = (plus - minus) / 2e-6
    torch.testing.assert_close(g_imp[0], fd, rtol=1e-5, atol=1e-8)


def test_assumed_steps_lower_the_lower_loss_without_touching_theta():
    lower, _, phi, _, d = _problem(1)
    theta = [torch.ones(d, dtype=torch.float64, requires_grad=True)]
    moved = bilevel.assumed_steps(lower, theta, phi, steps=5, lr=0.1)
    assert lower(moved, phi).item() < lower(theta, phi).item()
    assert torch.all(theta[0] == 1.0)


def test_damping_shrinks_the_meta_gradient():
    lower, upper, phi, theta_star, _ = _problem(2)
    star = [theta_star(phi[0].detach()).requires_grad_(True)]
    (g_up,) = torch.autograd.grad(upper(star), star)
    plain, _ = bilevel.implicit_meta_grad(lower, [g_up], star, phi, n_cg=50, damping=0.0)
    damped, _ = bilevel.implicit_meta_grad(lower, [g_up], star, phi, n_cg=50, damping=10.0)
    assert damped[0].norm() < plain[0].norm()
