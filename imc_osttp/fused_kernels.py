"""The numba kernels of the compiled time loops; `fused.py` is their torch side (views, autograd).

Each kernel walks a chunk's steps inside compiled code, sample by sample, step by step, with the
units innermost (contiguous, no dependence between them: the loop LLVM vectorises). The neuron's
kernels (`NeuronKernels`) are built for each neuron model from its one definition
(imc_osttp/neurons/base.py): its `step` and `jacobian` are compiled into them, so every unit sees
the same operations in the same order as in the eager torch loop, and no literal enters the
arithmetic (`one`, `zero` and the neuron's parameters come in with the arrays' dtype), so float32
stays float32. A unit's k state variables live in arrays [k, ...] (k = 1 for the SNU: the arrays
are the [B, K, n] ones) and reach the neuron as a tuple.

Compiled once per dtype at first use and cached on disk (`cache=True`; a neuron's kernels are keyed
by the source of imc_osttp/neurons, so editing a neuron recompiles them); imported only when a fused
loop first runs (numba's import costs seconds).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numba as nb
import numpy as np
from numba.extending import register_jitable

from .neurons.base import ELEMENTWISE, Neuron


@nb.njit(cache=True, nogil=True)
def spikes_times(y, H, rec, density):  # noqa: ANN001, ANN202
    """rec = y @ H for one step's spikes y [B, n]: a GEMM, or the sum of H's rows of the units that
    spiked where fewer than `density` of them did (`blas.EVENT_DENSITY`)."""
    if nonzeros(y) >= density * y.size:
        rec[:] = y @ H
    else:
        event_mm(y, H, rec)


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


@functools.cache
def _stamp(fn: Callable) -> str:
    """A digest of every neuron definition and of the file that defines `fn` (a neuron may live outside the
    package): kernels built from a changed one miss numba's cache, which keys them by their own source."""
    sources = sorted(Path(__file__).with_name("neurons").glob("*.py"))
    own = inspect.getsourcefile(fn)
    if own is not None and Path(own) not in sources:
        sources.append(Path(own))
    return hashlib.sha1(b"".join(path.read_bytes() for path in sources)).hexdigest()


@functools.cache
def _registered() -> None:
    """Hand every elementwise neuron function to numba (compiled inline where a kernel calls it)."""
    for fn in ELEMENTWISE:
        register_jitable(fn)


def _owner(*fns: Callable) -> str:
    """A file-name-safe tag of the functions a kernel is built from (module and name of each)."""
    return "_".join(re.sub(r"\W", "_", f"{fn.__module__}.{fn.__qualname__}") for fn in fns)


def _kernel(owner: str) -> Callable:
    """numba.njit with a disk cache of the kernel's own: the kernels of every neuron are closures of the same
    source, and numba names a cache by the function's qualified name, so each gets `owner` in it. One shared
    index would hold every neuron's entries, and loading it would import the module of each (a neuron
    defined in a test, say, which a training process cannot import)."""

    def decorate(fn: Callable) -> Callable:
        fn.__qualname__ = f"{fn.__qualname__}.{owner}"
        return nb.njit(cache=True, nogil=True)(fn)

    return decorate


def _gather(k: int, dims: int) -> Callable:
    """gather(a, *idx) = (a[0, *idx], …, a[k-1, *idx]): a unit's state as the tuple a neuron takes, from
    an array [k, …] of `dims` dimensions. Written out for this k and indexed in full (numba's
    to_fixed_tuple, or a view a[:, i], costs several times the SNU's whole step)."""
    idx = ", ".join("ijkl"[: dims - 1])
    namespace: dict = {}
    exec(f"def gather(a, {idx}):\n    return ({' '.join(f'a[{c}, {idx}],' for c in range(k))})\n", namespace)  # noqa: S102
    return register_jitable(namespace["gather"])


@functools.cache
def forward_kernels(neuron: Neuron, pre: Callable) -> SimpleNamespace:
    """The forward of one neuron model over a chunk, with its surrogate's elementwise part `pre`: S [KS, B,
    K, n], Y from the input currents cur [B, K, n] and the state before (h0 [KS, B, n], y0): h, arg =
    step(cur, h, y), y = Θ(arg), P = pre(arg). `recurrent` adds y^{t-1} H (one GEMM over the batch per
    step) to cur first."""
    _registered()
    return _forward(neuron.step, pre, neuron.k, _stamp(neuron.step), _gather(neuron.k, 2), _gather(neuron.k, 3))


@functools.cache
def map_kernel(fn: Callable) -> Callable:
    """P ← fn(P, q) over every entry of P, in place: an elementwise function as one pass."""
    _registered()
    return _map(fn, _stamp(fn))


@functools.cache
def neuron_kernels(neuron: Neuron) -> SimpleNamespace:
    """The other kernels of one neuron model: backward (BPTT), jacobian and traces (the exact traces' chunk)."""
    _registered()
    return SimpleNamespace(**_build(neuron.jacobian, neuron.spike_grad, neuron.current_grad, neuron.k,
                                    _stamp(neuron.jacobian),
                                    _gather(neuron.k, 3),
                                    _gather(neuron.k, 4)))


# The kernels are closures over the neuron's functions and its state size KS (a compile-time constant,
# so the loops over state variables unroll); each reads `stamp`, so that it is part of the closure,
# which numba's cache key hashes.

def _map(fn, stamp):  # noqa: ANN001, ANN202
    @_kernel(_owner(fn))
    def apply(P, q):  # noqa: ANN001, ANN202
        stamp  # noqa: B018
        flat = P.reshape(-1)
        for j in range(flat.size):
            flat[j] = fn(flat[j], q)

    return apply


def _forward(step, pre, KS, stamp, gather2, gather3):  # noqa: ANN001, ANN202, N803
    owner = _owner(step, pre)

    @_kernel(owner)
    def feedforward(cur, h0, y0, b, p, q, zero, one, S, Y, P):  # noqa: ANN001, ANN202
        """Sample by sample: a sample's state stays in cache for its whole chunk."""
        stamp  # noqa: B018
        Bn, K, n = cur.shape
        st = np.empty((KS, n), S.dtype)
        y = np.empty(n, S.dtype)
        for i in range(Bn):
            for j in range(n):
                y[j] = y0[i, j]
                for c in range(KS):
                    st[c, j] = h0[c, i, j]
            for k in range(K):
                for j in range(n):
                    h, arg = step(cur[i, k, j], gather2(st, j), y[j], b[j], p)
                    y[j] = one if arg > zero else zero
                    for c in range(KS):
                        st[c, j] = h[c]
                        S[c, i, k, j] = h[c]
                    Y[i, k, j] = y[j]
                    P[i, k, j] = pre(arg, q)

    @_kernel(owner)
    def recurrent(cur, h0, y0, b, H, p, q, zero, one, density, S, Y, P):  # noqa: ANN001, ANN202
        """Step by step over the batch: the recurrent current y^{t-1} H is one product per step."""
        stamp  # noqa: B018
        Bn, K, n = cur.shape
        st = h0.copy()
        ys = y0.copy()
        rec = np.empty((Bn, n), S.dtype)
        for k in range(K):
            spikes_times(ys, H, rec, density)
            for i in range(Bn):
                for j in range(n):
                    h, arg = step(cur[i, k, j] + rec[i, j], gather3(st, i, j), ys[i, j], b[j], p)
                    ys[i, j] = one if arg > zero else zero
                    for c in range(KS):
                        st[c, i, j] = h[c]
                        S[c, i, k, j] = h[c]
                    Y[i, k, j] = ys[i, j]
                    P[i, k, j] = pre(arg, q)

    return SimpleNamespace(feedforward=feedforward, recurrent=recurrent)


def _build(jac, spike_grad, current_grad, KS, stamp, gather3, gather4):  # noqa: ANN001, ANN202, C901, N803
    owner = _owner(jac)

    @register_jitable
    def self_weight(hd, j):  # noqa: ANN001, ANN202
        """Unit j's recurrent self-weight, or None without recurrence (hd None: compiled apart, the neuron's
        terms of it pruned)."""
        return None if hd is None else hd[j]

    @register_jitable
    def dot(a, q, i, j):  # noqa: ANN001, ANN202
        """Σ_c a[c, i, j] q[c]: a unit's gradient along the input current."""
        t = a[0, i, j] * q[0]
        for c in range(1, KS):
            t += a[c, i, j] * q[c]
        return t

    @register_jitable  # inlined where a kernel calls it (a dispatcher in the closure would defeat the cache)
    def back_unit(gS, gy, rec, S, Y, psi, b, p, zero, r, a, tmp, i, k, j):  # noqa: ANN001, ANN202
        """One unit of one step of `backward`: a ← dE/dh_k from a = dE/dh_{k+1}; returns its share of dE/db."""
        ep = (gy + rec) * psi[i, k, j]  # dE/dy_k (loss and recurrence) times dy/darg
        J, c = jac(gather4(S, i, k, j), Y[i, k, j], psi[i, k, j], b[j], None, p, True)
        db = -ep
        for c2 in range(KS):
            t = (gS[c2, i, k, j] if gS.size else zero) + ep * r[c2]
            for c1 in range(KS):
                t += a[c1, i, j] * J[c1][c2]
            tmp[c2, j] = t
        for c1 in range(KS):
            db += a[c1, i, j] * c[c1]
        for c2 in range(KS):
            a[c2, i, j] = tmp[c2, j]
        return db

    @_kernel(owner)
    def backward(gS, gY, S, Y, psi, h0, y0, b, H, p, zero, gcur, gb):  # noqa: ANN001, ANN202
        """BPTT through the forward with the surrogate as dy/darg, from the chunk's end; the state before the
        chunk is a constant. a_k = dE/dh_k obeys a_k = gS_k + e_k ψ_k r + a_{k+1} J_{k+1}, e_k = gY_k +
        (a_{k+1} q) Hᵀ, with J the neuron's exact Jacobian without the recurrent diagonal (y H carries it), r
        its spike_grad and q its current_grad; dE/dcur_k = a_k q, dE/db = Σ_k (−e_k ψ_k + a_{k+1} c_{k+1}) +
        a_0 c_0 (c_0 with ψ_{-1} = 0: only b's explicit part, the spike before the chunk being given). gS may
        be empty. The recurrent weights' gradient Σ_k y_{k-1}ᵀ dE/dcur_k is one GEMM outside, on gcur."""
        stamp  # noqa: B018
        _, Bn, K, n = S.shape
        r, q = spike_grad(p), current_grad(p)
        an = np.zeros((KS, Bn, n), S.dtype)  # a_{k+1}
        tmp = np.empty((KS, n), S.dtype)
        gbl = np.zeros(n, S.dtype)  # dE/db in a buffer of its own (no aliasing: the loop over j vectorises)
        if H.shape[0] == 0:  # sample by sample: a sample's chunk streams through the cache once
            for i in range(Bn):
                for k in range(K - 1, -1, -1):
                    for j in range(n):
                        gbl[j] += back_unit(gS, gY[i, k, j], zero, S, Y, psi, b, p, zero, r, an, tmp, i, k, j)
                        gcur[i, k, j] = dot(an, q, i, j)
        else:
            gq = np.zeros((Bn, n), S.dtype)  # dE/dcur_{k+1}
            for k in range(K - 1, -1, -1):
                rec = gq @ H.T
                for i in range(Bn):
                    for j in range(n):
                        gbl[j] += back_unit(gS, gY[i, k, j], rec[i, j], S, Y, psi, b, p, zero, r, an, tmp, i, k, j)
                        gq[i, j] = gcur[i, k, j] = dot(an, q, i, j)
        for i in range(Bn):
            for j in range(n):
                _, c = jac(gather3(h0, i, j), y0[i, j], zero, b[j], None, p, True)
                for c1 in range(KS):
                    gbl[j] += an[c1, i, j] * c[c1]
        gb += gbl

    @register_jitable
    def store(Jt, ct, J, C, i, k, j):  # noqa: ANN001, ANN202
        for c1 in range(KS):
            C[c1, i, k, j] = ct[c1]
            for c2 in range(KS):
                J[c1, c2, i, k, j] = Jt[c1][c2]

    @_kernel(owner)
    def jacobian(S, Y, psi, h_in, y_in, psi_in, b, hd, p, exact, J, C):  # noqa: ANN001, ANN202
        """The neuron's (J, c) at every step of a chunk, each step reading the one before (the state before
        the chunk for the first): J [KS, KS, B, K, n], C [KS, B, K, n]; hd the recurrent diagonal (None
        without)."""
        stamp  # noqa: B018
        _, Bn, K, n = S.shape
        for i in range(Bn):
            for j in range(n):
                Jt, ct = jac(gather3(h_in, i, j), y_in[i, j], psi_in[i, j], b[j], self_weight(hd, j), p, exact)
                store(Jt, ct, J, C, i, 0, j)
            for k in range(1, K):
                for j in range(n):
                    Jt, ct = jac(gather4(S, i, k - 1, j), Y[i, k - 1, j], psi[i, k - 1, j], b[j], self_weight(hd, j),
                                 p, exact)
                    store(Jt, ct, J, C, i, k, j)

    @register_jitable
    def along(Gv, q, j):  # noqa: ANN001, ANN202
        """Σ_c Gv[c, j] q[c]: G_s q, or a row of M_s times q."""
        t = Gv[0, j] * q[0]
        for c in range(1, KS):
            t += Gv[c, j] * q[c]
        return t

    @register_jitable
    def forward_unit(Jt, ct, gk, eb, A, gAl, Jb, r, one, k, need_A, j):  # noqa: ANN001, ANN202
        """One unit of one step of `traces`' forward pass: keeps J in Jb for the backward pass, ε_b ← J ε_b + c,
        A ← J A, Σ g rᵀA; returns g (rᵀε_b − 1)."""
        for c1 in range(KS):
            t = Jt[c1][0] * eb[0, j]
            for c2 in range(KS):
                Jb[k, c1, c2, j] = Jt[c1][c2]
                if c2:
                    t += Jt[c1][c2] * eb[c2, j]
            eb[KS + c1, j] = t + ct[c1]
        for c1 in range(KS):
            eb[c1, j] = eb[KS + c1, j]
        s = r[0] * eb[0, j]
        for c1 in range(1, KS):
            s += r[c1] * eb[c1, j]
        if need_A:
            for c2 in range(KS):
                for c1 in range(KS):
                    if k == 0:
                        t = Jt[c1][c2]
                    else:
                        t = Jt[c1][0] * A[0, c2, j]
                        for m in range(1, KS):
                            t += Jt[c1][m] * A[m, c2, j]
                    A[KS + c1, c2, j] = t
                for c1 in range(KS):
                    A[c1, c2, j] = A[KS + c1, c2, j]
                u = r[0] * A[0, c2, j]
                for c1 in range(1, KS):
                    u += r[c1] * A[c1, c2, j]
                gAl[c2, j] = gk * u if k == 0 else gAl[c2, j] + gk * u
        return gk * (s - one)

    @_kernel(owner)
    def traces(S, Y, psi, h_in, y_in, psi_in, b, hd, p, exact, zero, one, g, eps_b, G, F, A_last, gA, gb,  # noqa: ANN001, ANN202, PLR0913
               need_F, need_A):
        """Every per-unit recursion of `rules.traces.ExactTraces` over one chunk, the Jacobian J_s computed
        from the states as it goes (never stored): A_s = J_s A_{s-1} and Σ_s g_s rᵀ A_s (gA [KS, B, n], A_last
        [KS, KS, B, n], if a trace is held), the threshold trace ε_b ← J ε_b + c with Σ g (rᵀε_b − 1) into gb,
        and from the chunk's end G_s = g_s rᵀ + G_{s+1} J_{s+1} (G [B, K, n] gets G_s q, q the neuron's
        current_grad) and, if `need_F`, M_s = M_{s+1} J_{s+1} with F_s = M_s q (F [KS, B, K, n]). hd: the
        recurrent diagonal (None without).
        Per-sample state in local buffers (no aliasing with the arguments: the loops over units vectorise);
        a sample's J_s in one of them (K·KS²·n numbers: 77 kB for JSB's SNU layer, in cache)."""
        stamp  # noqa: B018
        _, Bn, K, n = S.shape
        r, q = spike_grad(p), current_grad(p)
        A = np.empty((2 * KS, KS, n), S.dtype)  # rows KS.. are scratch
        M = np.empty((2 * KS, KS, n), S.dtype)
        Gv = np.empty((2 * KS, n), S.dtype)
        eb = np.empty((2 * KS, n), S.dtype)
        gAl = np.empty((KS, n), S.dtype)
        acc = np.empty(n, S.dtype)
        Jb = np.empty((K, KS, KS, n), S.dtype)  # a sample's Jacobians, from the forward pass to the backward one
        for i in range(Bn):
            acc[:] = zero
            for c1 in range(KS):
                for j in range(n):
                    eb[c1, j] = eps_b[c1, i, j]
            for j in range(n):
                Jt, ct = jac(gather3(h_in, i, j), y_in[i, j], psi_in[i, j], b[j], self_weight(hd, j), p, exact)
                acc[j] += forward_unit(Jt, ct, g[i, 0, j], eb, A, gAl, Jb, r, one, 0, need_A, j)
            for k in range(1, K):
                for j in range(n):
                    Jt, ct = jac(gather4(S, i, k - 1, j), Y[i, k - 1, j], psi[i, k - 1, j], b[j], self_weight(hd, j),
                                 p, exact)
                    acc[j] += forward_unit(Jt, ct, g[i, k, j], eb, A, gAl, Jb, r, one, k, need_A, j)
            gb += acc
            for c1 in range(KS):
                for j in range(n):
                    eps_b[c1, i, j] = eb[c1, j]
            if need_A:
                for c1 in range(KS):
                    for j in range(n):
                        gA[c1, i, j] = gAl[c1, j]
                    for c2 in range(KS):
                        for j in range(n):
                            A_last[c1, c2, i, j] = A[c1, c2, j]
            for j in range(n):
                for c1 in range(KS):
                    Gv[c1, j] = g[i, K - 1, j] * r[c1]
                    for c2 in range(KS):
                        M[c1, c2, j] = one if c1 == c2 else zero
                G[i, K - 1, j] = along(Gv, q, j)
                if need_F:
                    for c1 in range(KS):
                        F[c1, i, K - 1, j] = q[c1]
            for k in range(K - 2, -1, -1):
                Jk = Jb[k + 1]
                for j in range(n):
                    for c2 in range(KS):
                        t = g[i, k, j] * r[c2]
                        for c1 in range(KS):
                            t += Gv[c1, j] * Jk[c1, c2, j]
                        Gv[KS + c2, j] = t
                    for c2 in range(KS):
                        Gv[c2, j] = Gv[KS + c2, j]
                    G[i, k, j] = along(Gv, q, j)
                    if need_F:
                        for c1 in range(KS):
                            for c2 in range(KS):
                                t = M[c1, 0, j] * Jk[0, c2, j]
                                for m in range(1, KS):
                                    t += M[c1, m, j] * Jk[m, c2, j]
                                M[KS + c1, c2, j] = t
                        for c1 in range(KS):
                            for c2 in range(KS):
                                M[c1, c2, j] = M[KS + c1, c2, j]
                            F[c1, i, k, j] = along(M[c1], q, j)

    return {"backward": backward, "jacobian": jacobian, "traces": traces}
