"""The engine's matrix products (imc_osttp/blas.py): event-driven and OpenBLAS paths against torch's own."""

from __future__ import annotations

import pytest
import torch

from imc_osttp import blas


@pytest.fixture(params=["torch", "openblas"])
def choice(request, monkeypatch):
    monkeypatch.setenv("IMC_OSTTP_BLAS", request.param)
    blas._choice.cache_clear()
    yield request.param
    blas._choice.cache_clear()


def spikes(rows: int, m: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(rows, m, generator=g, dtype=torch.float64) < density).double()


@pytest.mark.parametrize("density", [0.05, 0.5])  # the event path, then the dense one
def test_linear_and_its_gradients_match_torch(choice, density):
    x = spikes(300, 37, density)
    assert blas._events(x) == (density < blas.EVENT_DENSITY)
    W = torch.randn(37, 23, dtype=torch.float64, requires_grad=True)
    g = torch.randn(300, 23, dtype=torch.float64)
    out = blas.linear(x, W)
    (gW,) = torch.autograd.grad(out, W, g)
    assert torch.allclose(out, x @ W, rtol=0, atol=1e-12)
    assert torch.allclose(gW, x.T @ g, rtol=0, atol=1e-11)


def test_linear_gradient_reaches_its_input(choice):
    """The readout's input (spikes that need a gradient in BPTT) gets g Wᵀ on either path."""
    x = spikes(50, 11, 0.05).requires_grad_()
    W = torch.randn(11, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(50, 7, dtype=torch.float64)
    gx, gW = torch.autograd.grad(blas.linear(x, W), (x, W), g)
    assert torch.allclose(gx, g @ W.T, atol=1e-12) and torch.allclose(gW, x.T @ g, atol=1e-11)


@pytest.mark.parametrize("density", [0.05, 0.5])
def test_addmm_adds_the_transposed_product_in_place(choice, density):
    x = spikes(200, 13, density, seed=1)
    g = torch.randn(200, 9, dtype=torch.float64)
    c = torch.randn(13, 9, dtype=torch.float64)
    expected = c + x.T @ g
    assert blas.addmm_(c, x.transpose(0, 1), g) is c
    assert torch.allclose(c, expected, rtol=0, atol=1e-11)


def test_batched_products_match_torch(choice):
    a, b = torch.randn(4, 6, 5, dtype=torch.float64), torch.randn(4, 5, 3, dtype=torch.float64)
    assert torch.allclose(blas.mm(a.transpose(1, 2).transpose(1, 2), b), torch.bmm(a, b), atol=1e-12)
    c = torch.randn(4, 6, 3, dtype=torch.float64)
    expected = c + torch.bmm(a, b)
    assert torch.allclose(blas.addmm_(c, a, b), expected, atol=1e-12)


def test_float32_event_product_is_float32():
    x = spikes(64, 20, 0.05).float()
    W = torch.randn(20, 8)
    out = blas.linear(x, W)
    assert out.dtype == torch.float32 and torch.allclose(out, x @ W, atol=1e-5)


def test_cpu_choice_follows_the_vendor_unless_told(monkeypatch):
    monkeypatch.delenv("IMC_OSTTP_BLAS", raising=False)
    blas._choice.cache_clear()
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
        intel = "GenuineIntel" in info.read(4096)
    assert blas._choice() == ("torch" if intel else "openblas")
    monkeypatch.setenv("IMC_OSTTP_BLAS", "torch")
    blas._choice.cache_clear()
    assert blas._choice() == "torch"
    blas._choice.cache_clear()


@pytest.mark.parametrize("density", [0.05, 0.5])
def test_recurrent_current_inside_the_kernels_matches_the_product(density):
    """The fused recurrent loop's y H per step: events below an eighth of the units, a GEMM above."""
    from imc_osttp.fused import kernels

    y = spikes(8, 40, density, seed=2)
    H = torch.randn(40, 40, dtype=torch.float64)
    rec = torch.empty(8, 40, dtype=torch.float64)
    kernels().spikes_times(y.numpy(), H.numpy(), rec.numpy(), blas.EVENT_DENSITY)
    assert torch.allclose(rec, y @ H, rtol=0, atol=1e-12)
