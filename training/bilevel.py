"""Bi-DFCL meta-gradient (methods §5.3): CG on Hessian-vector products, or unrolling.

Parameters are lists of tensors; the lower loss is a function (theta, phi) -> scalar and the
upper loss a function theta -> scalar, so the same code serves networks and tiny test problems.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

LowerLoss = Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]
UpperLoss = Callable[[Sequence[Tensor]], Tensor]


@dataclass(frozen=True)
class CGResult:
    """Solution of H x = b and how well CG did (residual relative to ||b||)."""

    x: Tensor
    iterations: int
    relative_residual: float


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate tensors into one (P,) vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, n_iter: int, tol: float = 1e-10
) -> CGResult:
    """Solve A x = b for SPD A given only x -> A x (Alg 4, x0 = 0).

    Safeguards for an indefinite A (§5.3): stop on non-positive curvature and return the iterate
    with the smallest residual seen, so a diverging run cannot return garbage.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    b_norm = float(b.norm()) or 1.0
    best = (float(rs.sqrt()), x, 0)
    for it in range(1, n_iter + 1):
        ap = matvec(p)
        curvature = p @ ap
        if curvature <= 0:
            break
        alpha = rs / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = r @ r
        if float(rs_new.sqrt()) < best[0]:
            best = (float(rs_new.sqrt()), x, it)
        if float(rs_new.sqrt()) < tol * b_norm:
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return CGResult(x=best[1], iterations=best[2], relative_residual=best[0] / b_norm)


def assumed_steps(
    lower: LowerLoss, theta: Sequence[Tensor], phi: Sequence[Tensor], steps: int, lr: float
) -> list[Tensor]:
    """theta' after k SGD steps on L_low(phi, .) from a copy of theta (Alg 1); no graph kept."""
    fixed_phi = [p.detach() for p in phi]
    current = [t.detach().clone().requires_grad_(True) for t in theta]
    for _ in range(steps):
        grads = torch.autograd.grad(lower(current, fixed_phi), current)
        current = [
            (t - lr * g).detach().requires_grad_(True) for t, g in zip(current, grads, strict=True)
        ]
    return current


def implicit_meta_grad(
    lower: LowerLoss,
    upper_grad: Sequence[Tensor],
    theta_star: Sequence[Tensor],
    phi: Sequence[Tensor],
    n_cg: int,
    damping: float,
    tol: float = 1e-10,
) -> tuple[list[Tensor], CGResult]:
    """d L_up / d phi = -X^T (H + mu I)^{-1} g at theta* by implicit differentiation (Eq 18).

    upper_grad: g = dL_up/dtheta at theta_star. theta_star tensors must require grad.
    """
    loss = lower(theta_star, phi)
    grad_theta = flatten(torch.autograd.grad(loss, theta_star, create_graph=True))

    def hvp(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(grad_theta, theta_star, grad_outputs=v, retain_graph=True)
        return flatten(hv) + damping * v

    solve = conjugate_gradient(hvp, flatten(upper_grad).detach(), n_cg, tol)
    grads = torch.autograd.grad(grad_theta, phi, grad_outputs=-solve.x.detach(), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, phi, strict=True)], solve


def unrolled_meta_grad(
    lower: LowerLoss,
    upper: UpperLoss,
    theta: Sequence[Tensor],
    phi: Sequence[Tensor],
    steps: int,
    lr: float,
) -> list[Tensor]:
    """d L_up(theta_steps(phi)) / d phi by back-propagating through `steps` SGD steps (App. A.5)."""
    current = [t.detach().clone().requires_grad_(True) for t in theta]
    for _ in range(steps):
        grads = torch.autograd.grad(lower(current, phi), current, create_graph=True)
        current = [t - lr * g for t, g in zip(current, grads, strict=True)]
    out = torch.autograd.grad(upper(current), phi, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(out, phi, strict=True)]
