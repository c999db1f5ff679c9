"""The paper's LRN (section 3.3) evaluated in NumPy, window by window: the independent
reference the Triton LRN tests compare the kernels with."""

from __future__ import annotations

import numpy as np

from alexnet import paper


def lrn_formula(a: np.ndarray, g: np.ndarray, groups: int, n: int = paper.LRN_N,
                alpha: float = paper.LRN_ALPHA, beta: float = paper.LRN_BETA,
                k: float = paper.LRN_K) -> tuple[np.ndarray, np.ndarray]:
    """b = a s^-beta, s = k + alpha sum of a^2 over the window c-n//2..c+n//2 clipped at each
    column's edges (groups columns of maps), and grad_a for the output gradient g:
    g s^-beta - 2 alpha beta a times the sum over the same (symmetric) window of
    g a s^(-beta-1)."""
    c, h = a.shape[1], n // 2
    per = c // groups
    lo = [max(i // per * per, i - h) for i in range(c)]
    hi = [min(i // per * per + per - 1, i + h) + 1 for i in range(c)]
    s = np.stack([k + alpha * (a[:, lo[i]:hi[i]] ** 2).sum(1) for i in range(c)], 1)
    u = g * a * s ** (-beta - 1)
    window_u = np.stack([u[:, lo[i]:hi[i]].sum(1) for i in range(c)], 1)
    return a * s ** -beta, g * s ** -beta - 2 * alpha * beta * a * window_u
