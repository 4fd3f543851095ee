"""The eager engine: every time loop step by step in torch, on any device; autograd differentiates the
layer's loop for BPTT. The reference the fused engine (imc_osttp/fused.py) is tested against."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .engine import Dynamics, TraceChunk, shift_in
from .neurons.surrogates import spike

if TYPE_CHECKING:
    from .network import LayerChunk, LayerState


def _matmul(J: list[list[Tensor]], M: list[list[Tensor]]) -> list[list[Tensor]]:
    """(J M)[a][c] = Σ_m J[a][m] M[m][c] per unit, for k×k lists of tensors."""
    return [[sum((J[a][m] * M[m][c] for m in range(1, len(M))), J[a][0] * M[0][c]) for c in range(len(M[0]))]
            for a in range(len(J))]


class EagerEngine:
    name = "eager"

    def layer(self, dyn: Dynamics, cur: Tensor, before: LayerState, b: Tensor, H: Tensor | None,
              recur: Callable[[Tensor], Tensor] | None, differentiable: bool) -> tuple[Tensor, Tensor, Tensor]:
        neuron, p, surrogate = dyn
        h, y = tuple(before.h), before.y
        states, spikes, args = [], [], []
        # unbind, not cur[:, k]: autograd then adds one gradient per step instead of materialising
        # a [B, K, n] zero tensor per step (quadratic in K for BPTT)
        for i_x in cur.unbind(1):
            h, arg = neuron.step(i_x + recur(y) if recur is not None else i_x, h, y, b, p)
            y = spike(arg, surrogate.name) if differentiable else (arg > 0).to(arg.dtype)
            states.append(h)
            spikes.append(y)
            args.append(arg)
        S = torch.stack([torch.stack([hs[c] for hs in states], 1) for c in range(neuron.k)])
        return S, torch.stack(spikes, 1), surrogate(torch.stack(args, 1).detach())

    def jacobian(self, dyn: Dynamics, chunk: LayerChunk, before: LayerState, b: Tensor, hd: Tensor | None,
                 exact: bool) -> tuple[Tensor, Tensor]:
        neuron, p, _ = dyn
        h = tuple(shift_in(before.h, chunk.h).unbind(0))
        J, c = neuron.jacobian(h, shift_in(before.y, chunk.y), shift_in(before.psi, chunk.psi), b.detach(),
                               None if hd is None else hd.detach(), p, exact)
        like = chunk.y

        def full(entry: Tensor | float) -> Tensor:
            return entry.expand_as(like) if isinstance(entry, Tensor) else torch.full_like(like, entry)

        return torch.stack([torch.stack([full(e) for e in row]) for row in J]), torch.stack([full(e) for e in c])

    def traces(self, dyn: Dynamics, chunk: LayerChunk, before: LayerState, b: Tensor, hd: Tensor | None,
               exact: bool, g: Tensor, eps_b: Tensor, carry: bool, held: bool) -> TraceChunk:
        """The fused `traces` kernel's recursions (imc_osttp/fused_kernels.py) over whole [B, n] slices."""
        Jt, ct = self.jacobian(dyn, chunk, before, b, hd, exact)
        r, q = dyn.neuron.spike_grad(dyn.params), dyn.neuron.current_grad(dyn.params)
        k, K = Jt.shape[0], g.shape[1]
        J = [[[Jt[a, c, :, s] for c in range(k)] for a in range(k)] for s in range(K)]
        e, seq = list(eps_b.unbind(0)), []
        for s in range(K):  # the threshold trace ε_b ← J ε_b + c
            e = [sum((J[s][a][m] * e[m] for m in range(1, k)), J[s][a][0] * e[0]) + ct[a, :, s] for a in range(k)]
            seq.append(e)
        eps_b.copy_(torch.stack(e))
        spiking = sum((r[a] * torch.stack([es[a] for es in seq], 1) for a in range(1, k)),
                      r[0] * torch.stack([es[0] for es in seq], 1))
        gb = (g * (spiking - 1.0)).sum((0, 1))
        A_last = gA = None
        if held:  # A_s = J_s ⋯ J_0 and Σ_s g_s rᵀ A_s
            A, gAs = J[0], []
            for s in range(K):
                A = A if s == 0 else _matmul(J[s], A)
                gAs.append([sum((r[a] * A[a][c] for a in range(1, k)), r[0] * A[0][c]) for c in range(k)])
            A_last = torch.stack([torch.stack(row) for row in A])
            gA = torch.stack([(g * torch.stack([ga[c] for ga in gAs], 1)).sum(1) for c in range(k)])
        # from the chunk's end: G_s = g_s rᵀ + G_{s+1} J_{s+1}, M_s = M_{s+1} J_{s+1}, F_s = M_s q
        def along_q(v: list[Tensor]) -> Tensor:
            return sum((v[c] * q[c] for c in range(1, k)), v[0] * q[0])

        Gv = [g[:, K - 1] * r[c] for c in range(k)]
        ones, zeros = torch.ones_like(g[:, 0]), torch.zeros_like(g[:, 0])
        M = [[ones if a == c else zeros for c in range(k)] for a in range(k)]
        G, F = [along_q(Gv)], [[along_q(M[a]) for a in range(k)]]
        for s in range(K - 2, -1, -1):
            later = J[s + 1]
            Gv = [sum((Gv[a] * later[a][c] for a in range(k)), g[:, s] * r[c]) for c in range(k)]
            G.append(along_q(Gv))
            if carry:
                M = _matmul(M, later)
                F.append([along_q(M[a]) for a in range(k)])
        G_ = torch.stack(G[::-1], 1)
        F_ = torch.stack([torch.stack([f[a] for f in F[::-1]], 1) for a in range(k)]) if carry else None
        return TraceChunk(G_, F_, A_last, gA, gb)

    def scan(self, state: Tensor, coef: Tensor | float, drive: Tensor, reverse: bool = False) -> Tensor:
        out = []
        steps = range(drive.shape[1] - 1, -1, -1) if reverse else range(drive.shape[1])
        for k in steps:
            state = (coef[:, k] if isinstance(coef, Tensor) else coef) * state + drive[:, k]
            out.append(state)
        return torch.stack(out[::-1] if reverse else out, 1)

    def linear_scan(self, state: Tensor, drive: Tensor, tau: float) -> Tensor:
        out = []
        for d_k in drive.unbind(1):  # unbind: linear-time BPTT
            state = tau * state + d_k
            out.append(state)
        return torch.stack(out, 1)
