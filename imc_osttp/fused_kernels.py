"""The numba kernels of the compiled time loops; `fused.py` is their torch side (views, autograd).

Each kernel walks a chunk's steps inside compiled code, sample by sample, step by step, with the
units innermost (contiguous, no dependence between them: the loop LLVM vectorises). Every unit
sees the same operations in the same order as in the eager torch loop it replaces, and no
literal enters the arithmetic (`one`, `zero`, `d` come in with the arrays' dtype), so float32
stays float32. Compiled once per dtype at first use and cached on disk
(`cache=True`); imported only when a fused loop first runs (numba's import costs seconds).
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def membrane(c, s, y, bj, d, one, full):  # noqa: ANN001, ANN202
    """`neuron.membrane` for one unit: s = c + d·s·(1 - y) (full) or c + d·s - y·b (soft)."""
    if full:
        return c + d * s * (one - y)
    return c + d * s - y * bj


@nb.njit(cache=True, nogil=True)
def surrogate_pre(v, two, hundred, one, tanh):  # noqa: ANN001, ANN202
    """ψ(v) for the fast sigmoid, 1/(100|v| + 1)²; for tanh, -2|v|, which `sech2` finishes after
    one vectorised sigmoid (numba's scalar tanh costs ~20 ns, torch's sigmoid < 1 ns)."""
    if tanh:
        return -two * abs(v)
    q = hundred * abs(v) + one
    return one / (q * q)


@nb.njit(cache=True, nogil=True)
def sech2(P, four, one):  # noqa: ANN001, ANN202
    """P ← 4P(1 - P) in place: with P = σ(-2|v|) that is sech²(v) = 1 - tanh²(v), the tanh surrogate."""
    flat = P.reshape(-1)
    for j in range(flat.size):
        flat[j] = four * flat[j] * (one - flat[j])


@nb.njit(cache=True, nogil=True)
def spikes_times(y, H, rec, density):  # noqa: ANN001, ANN202
    """rec = y @ H for one step's spikes y [B, n]: a GEMM, or the sum of H's rows of the units that
    spiked where fewer than `density` of them did (`blas.EVENT_DENSITY`)."""
    if nonzeros(y) >= density * y.size:
        rec[:] = y @ H
    else:
        event_mm(y, H, rec)


@nb.njit(cache=True, nogil=True)
def snu_forward(cur, s0, y0, b, H, d, one, zero, full, S, Y, P, two, hundred, tanh, density):  # noqa: ANN001, ANN202
    """S, Y over a chunk: s = membrane(cur, s, y), y = Θ(s - b); with H [n, n] the recurrent current
    y^{t-1} H (one GEMM over the batch per step) is added to cur first. P gets `surrogate_pre`."""
    Bn, K, n = cur.shape
    if H.shape[0] == 0:  # feed-forward: a sample's state stays in cache for its whole chunk
        for i in range(Bn):
            s = s0[i].copy()
            y = y0[i].copy()
            for k in range(K):
                for j in range(n):
                    s[j] = membrane(cur[i, k, j], s[j], y[j], b[j], d, one, full)
                    y[j] = one if s[j] - b[j] > zero else zero
                    S[i, k, j] = s[j]
                    Y[i, k, j] = y[j]
                    P[i, k, j] = surrogate_pre(s[j] - b[j], two, hundred, one, tanh)
        return
    s = s0.copy()
    y = y0.copy()
    rec = np.empty((Bn, n), S.dtype)
    for k in range(K):
        spikes_times(y, H, rec, density)
        for i in range(Bn):
            for j in range(n):
                s[i, j] = membrane(cur[i, k, j] + rec[i, j], s[i, j], y[i, j], b[j], d, one, full)
                y[i, j] = one if s[i, j] - b[j] > zero else zero
                S[i, k, j] = s[i, j]
                Y[i, k, j] = y[i, j]
                P[i, k, j] = surrogate_pre(s[i, j] - b[j], two, hundred, one, tanh)


@nb.njit(cache=True, nogil=True)
def snu_step_back(gs, gy, s, y, p, an, r, bj, d, one, full):  # noqa: ANN001, ANN202
    """One unit of one step of `snu_backward`: (a_k, its share of dE/db) from a_{k+1} = an and the
    recurrent term r = (a_{k+1} Hᵀ)_j (zero without H)."""
    if full:
        ep = (gy - an * d * s + r) * p
        return gs + ep + an * d * (one - y), -ep
    ep = (gy - an * bj + r) * p
    return gs + ep + an * d, -(ep + an * y)


@nb.njit(cache=True, nogil=True)
def snu_backward(gS, gY, S, Y, psi, s0, y0, b, H, d, one, zero, full, gcur, gs0, gy0, gb):  # noqa: ANN001, ANN202
    """The exact backward of `snu_forward` with the surrogate as dy/ds, from the chunk's end.

    a_k = dE/ds_k and e_k = dE/dy_k obey e_k = gY_k + a_{k+1} ∂s_{k+1}/∂y_k (+ a_{k+1} Hᵀ) and
    a_k = gS_k + e_k ψ_k + a_{k+1} ∂s_{k+1}/∂s_k (ψ_k = ψ(s_k - b), given); dE/dcur_k = a_k.
    gS may be empty (S unused downstream). Fills gcur, gs0, gy0 and gb (summed over samples);
    the recurrent weights' gradient Σ_k y_{k-1}ᵀ a_k is one GEMM outside, on gcur."""
    Bn, K, n = S.shape
    recurrent = H.shape[0] != 0
    has_gs = gS.size != 0
    an = np.zeros((Bn, n), S.dtype)  # a_{k+1}
    gbl = np.zeros(n, S.dtype)  # dE/db in a buffer of its own (no aliasing: the loop over j vectorises)
    if not recurrent:  # sample by sample: a sample's chunk streams through the cache once
        for i in range(Bn):
            ai = an[i]
            for k in range(K - 1, -1, -1):
                for j in range(n):
                    a, db = snu_step_back(gS[i, k, j] if has_gs else zero, gY[i, k, j], S[i, k, j], Y[i, k, j],
                                          psi[i, k, j], ai[j], zero, b[j], d, one, full)
                    gbl[j] += db
                    gcur[i, k, j] = a
                    ai[j] = a
    else:
        for k in range(K - 1, -1, -1):
            rec = an @ H.T
            for i in range(Bn):
                for j in range(n):
                    a, db = snu_step_back(gS[i, k, j] if has_gs else zero, gY[i, k, j], S[i, k, j], Y[i, k, j],
                                          psi[i, k, j], an[i, j], rec[i, j], b[j], d, one, full)
                    gbl[j] += db
                    gcur[i, k, j] = a
                    an[i, j] = a
    gb += gbl
    rec = an @ H.T if recurrent else an
    for i in range(Bn):
        for j in range(n):
            if full:
                gs0[i, j] = an[i, j] * d * (one - y0[i, j])
                gy0[i, j] = -an[i, j] * d * s0[i, j]
            else:
                gs0[i, j] = an[i, j] * d
                gy0[i, j] = -an[i, j] * b[j]
                gb[j] -= an[i, j] * y0[i, j]
            if recurrent:
                gy0[i, j] += rec[i, j]


@nb.njit(cache=True, nogil=True)
def scan(state, coef, drive, out, reverse):  # noqa: ANN001, ANN202
    """out_k = coef_k ⊙ out_{k∓1} + drive_k from `state`, forward or from the chunk's end;
    `coef` is [B, K, n] or [1, 1, 1] (one number for every step and unit)."""
    Bn, K, n = drive.shape
    per_step = coef.size != 1  # a [1, 1, 1] chunk reads the same either way
    c0 = coef[0, 0, 0]
    for i in range(Bn):
        s = state[i].copy()
        for step in range(K):
            k = K - 1 - step if reverse else step
            for j in range(n):
                s[j] = (coef[i, k, j] if per_step else c0) * s[j] + drive[i, k, j]
                out[i, k, j] = s[j]


@nb.njit(cache=True, nogil=True)
def exact_chunk(D, c, g, eps_b, G, F, A_last, gA, gb, need_F, need_A, one):  # noqa: ANN001, ANN202
    """Every n-sized recursion of `rules.traces.ExactTraces` over one chunk, per sample and unit:
    A = cumprod D, Σ_s g_s A_s, the threshold trace ε_b ← D ε_b + c with Σ g (ε_b - 1), and from the
    chunk's end G_s = g_s + D_{s+1} G_{s+1} and F_s = D_{s+1} ⋯ D_{K-1}."""
    Bn, K, n = D.shape
    for i in range(Bn):
        a = D[i, 0].copy()
        ga = g[i, 0] * a
        e = D[i, 0] * eps_b[i] + c[i, 0]
        acc = g[i, 0] * (e - one)
        for k in range(1, K):
            for j in range(n):
                a[j] = a[j] * D[i, k, j]
                ga[j] += g[i, k, j] * a[j]
                e[j] = D[i, k, j] * e[j] + c[i, k, j]
                acc[j] += g[i, k, j] * (e[j] - one)
        eps_b[i] = e
        gb += acc
        if need_A:
            A_last[i] = a
            gA[i] = ga
        Gk = g[i, K - 1].copy()
        f = np.full(n, one)
        G[i, K - 1] = Gk
        if need_F:
            F[i, K - 1] = f
        for k in range(K - 2, -1, -1):
            for j in range(n):
                later = D[i, k + 1, j]
                Gk[j] = later * Gk[j] + g[i, k, j]
                G[i, k, j] = Gk[j]
                if need_F:
                    f[j] = f[j] * later
                    F[i, k, j] = f[j]


@nb.njit(cache=True, nogil=True)
def jacobian(S, Y, psi, s_in, y_in, psi_in, b, h, d, full, exact, one, D, c):  # noqa: ANN001, ANN202
    """`neuron.jacobian_diag` at every step of a chunk, each step reading the one before (the state
    before the chunk for the first), with the same operations in the same order."""
    Bn, K, n = S.shape
    recurrent = h.shape[0] != 0
    for i in range(Bn):
        for k in range(K):
            s_prev = S[i, k - 1] if k else s_in[i]
            y_prev = Y[i, k - 1] if k else y_in[i]
            p_prev = psi[i, k - 1] if k else psi_in[i]
            for j in range(n):
                s, y, p = s_prev[j], y_prev[j], p_prev[j]
                if not exact:
                    Dk = d
                    ck = y - y if full else -y
                elif full:
                    ds = d * s
                    Dk = d * (one - y) - ds * p
                    ck = ds * p
                else:
                    Dk = d - b[j] * p
                    ck = b[j] * p - y
                if exact and recurrent:
                    Dk = Dk + h[j] * p
                    ck = ck - h[j] * p
                D[i, k, j] = Dk
                c[i, k, j] = ck


@nb.njit(cache=True, nogil=True)
def event_mm(x, W, out):  # noqa: ANN001, ANN202
    """out = x @ W reading only x's non-zero entries: for spikes, a sum of W's rows per row of x."""
    rows, m = x.shape
    n = W.shape[1]
    for r in range(rows):
        acc = out[r]
        acc[:] = 0
        for k in range(m):
            v = x[r, k]
            if v != 0:
                for j in range(n):
                    acc[j] += v * W[k, j]


@nb.njit(cache=True, nogil=True)
def event_mm_t(x, g, out):  # noqa: ANN001, ANN202
    """out += xᵀ @ g reading only x's non-zero entries (the weight gradient of `event_mm`)."""
    rows, m = x.shape
    n = g.shape[1]
    for r in range(rows):
        for k in range(m):
            v = x[r, k]
            if v != 0:
                for j in range(n):
                    out[k, j] += v * g[r, j]


@nb.njit(cache=True, nogil=True)
def nonzeros(x):  # noqa: ANN001, ANN202
    """The number of non-zero entries (torch.count_nonzero takes ~3 ns per entry, this < 0.3)."""
    flat = x.reshape(-1)
    count = 0
    for j in range(flat.size):
        count += flat[j] != 0
    return count
