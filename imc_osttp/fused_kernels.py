"""The numba kernels of the compiled time loops; `fused.py` is their torch side (views, autograd).

Each kernel walks a chunk's steps inside compiled code, one sample and unit at a time, with the
same operations in the same order as the eager torch loop it replaces, and no literal in the
arithmetic, so float32 stays float32. Compiled once per dtype at first use and cached on disk
(`cache=True`); imported only when a fused loop first runs (numba's import costs seconds).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def membrane(c, s, y, bj, d, full):  # noqa: ANN001, ANN202
    """`neuron.membrane` for one unit with the same operations in the same order; no literal
    enters the arithmetic, so float32 stays float32 (y is 0 or 1: s·(1 - y) is s or 0)."""
    if full:
        return c + d * s if y == 0 else c
    return c + d * s - y * bj


@nb.njit(cache=True, nogil=True)
def snu_forward(cur, s0, y0, b, H, d, full, S, Y):  # noqa: ANN001, ANN202
    """S, Y over a chunk: s = cur + d·s·(1 - y) (full) or cur + d·s - y·b (soft), y = Θ(s - b);
    with H [n, n] the recurrent current y^{t-1} H is added to cur first. `d` has the arrays' dtype."""
    Bn, K, n = cur.shape
    if H.shape[0] == 0:  # feed-forward: every unit's recursion is independent
        for i in range(Bn):
            for j in range(n):
                s, y, bj = s0[i, j], y0[i, j], b[j]
                for k in range(K):
                    s = membrane(cur[i, k, j], s, y, bj, d, full)
                    S[i, k, j] = s
                    Y[i, k, j] = s - bj > 0
                    y = Y[i, k, j]
        return
    s = s0.copy()
    y = y0.copy()
    for k in range(K):
        rec = y @ H
        for i in range(Bn):
            for j in range(n):
                s[i, j] = membrane(cur[i, k, j] + rec[i, j], s[i, j], y[i, j], b[j], d, full)
                S[i, k, j] = s[i, j]
                Y[i, k, j] = s[i, j] - b[j] > 0
                y[i, j] = Y[i, k, j]


@nb.njit(cache=True, nogil=True)
def snu_backward(gS, gY, S, Y, psi, s0, y0, b, H, d, full, gcur, gs0, gy0, gb):  # noqa: ANN001, ANN202
    """The exact backward of `snu_forward` with the surrogate as dy/ds, from the chunk's end.

    a_k = dE/ds_k and e_k = dE/dy_k obey e_k = gY_k + a_{k+1} ∂s_{k+1}/∂y_k (+ a_{k+1} Hᵀ) and
    a_k = gS_k + e_k ψ_k + a_{k+1} ∂s_{k+1}/∂s_k (ψ_k = ψ(s_k - b), given); dE/dcur_k = a_k. Fills gcur, gs0, gy0, gb
    (gb summed over samples); the recurrent weights' gradient Σ_k y_{k-1}ᵀ a_k is one GEMM
    outside, on gcur."""
    Bn, K, n = S.shape
    a_next = np.zeros((Bn, n), S.dtype)  # a_{k+1}
    for k in range(K - 1, -1, -1):
        if H.shape[0] != 0:
            rec = a_next @ H.T
        for i in range(Bn):
            for j in range(n):
                s, y, bj = S[i, k, j], Y[i, k, j], b[j]
                an = a_next[i, j]
                if full:
                    e = gY[i, k, j] - an * d * s
                else:
                    e = gY[i, k, j] - an * bj
                if H.shape[0] != 0:
                    e += rec[i, j]
                ep = e * psi[i, k, j]
                gb[j] -= ep
                if not full:
                    gb[j] -= an * y
                if full:
                    a = gS[i, k, j] + ep + an * d * (1 - y)
                else:
                    a = gS[i, k, j] + ep + an * d
                gcur[i, k, j] = a
        for i in range(Bn):
            for j in range(n):
                a_next[i, j] = gcur[i, k, j]
    if H.shape[0] != 0:
        rec = a_next @ H.T
    for i in range(Bn):
        for j in range(n):
            an = a_next[i, j]
            if full:
                gs0[i, j] = an * d * (1 - y0[i, j])
                gy0[i, j] = -an * d * s0[i, j]
            else:
                gs0[i, j] = an * d
                gy0[i, j] = -an * b[j]
                gb[j] -= an * y0[i, j]
            if H.shape[0] != 0:
                gy0[i, j] += rec[i, j]


@nb.njit(cache=True, nogil=True)
def scan(state, coef, drive, out, reverse):  # noqa: ANN001, ANN202
    """out_k = coef_k ⊙ out_{k∓1} + drive_k from `state`, forward or from the chunk's end;
    `coef` is [B, K, n] or [1, 1, 1] (one number for every step and unit)."""
    Bn, K, n = drive.shape
    per_step = coef.size != 1  # a [1, 1, 1] chunk reads the same either way
    for i in range(Bn):
        for j in range(n):
            s = state[i, j]
            for step in range(K):
                k = K - 1 - step if reverse else step
                c = coef[i, k, j] if per_step else coef[0, 0, 0]
                s = c * s + drive[i, k, j]
                out[i, k, j] = s


@nb.njit(cache=True, nogil=True)
def exact_chunk(D, c, g, eps_b, G, F, A_last, gA, gb, need_F, need_A, one):  # noqa: ANN001, ANN202
    """Every n-sized recursion of `rules.traces.ExactTraces` over one chunk, per sample and unit:
    A = cumprod D, Σ_s g_s A_s, the threshold trace ε_b ← D ε_b + c with Σ g (ε_b - 1), and from the
    chunk's end G_s = g_s + D_{s+1} G_{s+1} and F_s = D_{s+1} ⋯ D_{K-1}."""
    Bn, K, n = D.shape
    for i in range(Bn):
        for j in range(n):
            a = D[i, 0, j]
            ga = g[i, 0, j] * a
            e = D[i, 0, j] * eps_b[i, j] + c[i, 0, j]
            acc = g[i, 0, j] * (e - 1)
            for k in range(1, K):
                a = a * D[i, k, j]
                ga += g[i, k, j] * a
                e = D[i, k, j] * e + c[i, k, j]
                acc += g[i, k, j] * (e - 1)
            eps_b[i, j] = e
            gb[j] += acc
            if need_A:
                A_last[i, j] = a
                gA[i, j] = ga
            Gk = g[i, K - 1, j]
            f = one
            G[i, K - 1, j] = Gk
            if need_F:
                F[i, K - 1, j] = f
            for k in range(K - 2, -1, -1):
                later = D[i, k + 1, j]
                Gk = later * Gk + g[i, k, j]
                G[i, k, j] = Gk
                if need_F:
                    f = f * later
                    F[i, k, j] = f


@nb.njit(cache=True, nogil=True)
def jacobian(S, Y, psi, s_in, y_in, psi_in, b, h, d, full, exact, one, D, c):  # noqa: ANN001, ANN202
    """`neuron.jacobian_diag` at every step of a chunk, each step reading the one before (the state
    before the chunk for the first), with the same operations in the same order."""
    Bn, K, n = S.shape
    for i in range(Bn):
        for j in range(n):
            s, y, p = s_in[i, j], y_in[i, j], psi_in[i, j]
            for k in range(K):
                if not exact:
                    Dk = d
                    ck = -y if not full else y - y
                elif full:
                    ds = d * s
                    Dk = d * (one - y) - ds * p
                    ck = ds * p
                else:
                    Dk = d - b[j] * p
                    ck = b[j] * p - y
                if exact and h.shape[0] != 0:
                    Dk = Dk + h[j] * p
                    ck = ck - h[j] * p
                D[i, k, j] = Dk
                c[i, k, j] = ck
                s, y, p = S[i, k, j], Y[i, k, j], psi[i, k, j]
