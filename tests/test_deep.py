"""Deep networks (SPEC §6): every rule on L hidden layers, checked against its definition.

- OSTL (eq. 7) is the autograd gradient of a copy of the network whose layers above l have
  their temporal state detached; BPTT is the true derivative (finite differences);
- OSTTP's update of layer l is local in space and is the gradient of Σ_t ⟨y*^t B_l, y_l^t⟩;
- DRTP has no trace in any layer; ideal analog tiles reproduce the digital updates.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from imc_osttp.builder import build_network
from imc_osttp.config import load_run_config
from imc_osttp.data.batching import collate
from imc_osttp.errors import ConfigError
from imc_osttp.neurons.surrogates import spike
from imc_osttp.rules import compute_update

M, K = 10, 8
WIDTHS = [12, 9]


def make_batch(seed: int = 0, lengths=(7, 5, 9)):
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.rand(T, M, generator=g) < 0.4).double() for T in lengths]
    return collate(xs, [(torch.rand(T, K, generator=g) < 0.3).double() for T in lengths])


def network(rule: str, *overrides: str, widths=WIDTHS):
    cfg = load_run_config(None, [f"rule.name={rule}", "train.dtype=float64", f"model.hidden={widths}",
                                 "model.threshold_init=0.3", "model.init_gain=2.5", *overrides])
    return cfg, build_network(cfg, M, K)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def reference_loss(cfg, params: dict[str, torch.Tensor], batch, detach_above: int | None = None) -> torch.Tensor:
    """E = Σ_b Σ_t BCE / B, computed step by step from SPEC §1 (not the engine's chunked code). Layers
    above `detach_above` see their own s^{t-1}, y^{t-1} detached: eq. 7's view of the network."""
    layers = cfg.model.layers()
    s = [batch.x.new_zeros(batch.size, layer.n) for layer in layers]
    y = [batch.x.new_zeros(batch.size, layer.n) for layer in layers]
    out, bias = params[f"W{len(layers) + 1}"], params[f"c{len(layers) + 1}"]
    loss = batch.x.new_zeros(())
    for t in range(batch.x.shape[1]):
        inp = batch.x[:, t]
        for i, layer in enumerate(layers):
            s_prev, y_prev = s[i], y[i]
            if detach_above is not None and layer.index > detach_above:
                s_prev, y_prev = s_prev.detach(), y_prev.detach()
            current = inp @ params[layer.W]
            if layer.recurrent:
                current = current + y_prev @ params[layer.H]
            b = params[layer.b]
            if layer.reset == "full":
                s[i] = current + layer.decay * s_prev * (1 - y_prev)
            else:
                s[i] = current + layer.decay * s_prev - y_prev * b
            y[i] = inp = spike(s[i] - b, cfg.model.surrogate)
        bce = F.binary_cross_entropy_with_logits(inp @ out + bias, batch.y[:, t], reduction="none").sum(-1)
        loss = loss + (bce * batch.mask[:, t]).sum()
    return loss / batch.size


def leaf_params(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in net.backend.parameters().items()}


# ------------------------------------------------------------------------------------------ OSTL


@pytest.mark.parametrize("reset,widths,chunk", [("full", WIDTHS, 64), ("soft", WIDTHS, 64), ("full", [7, 11, 6], 2),
                                                ("soft", [7, 11, 6], 3)])
def test_ostl_equals_autograd_with_upper_temporal_state_detached(reset, widths, chunk, monkeypatch):
    """Eq. 7's definition, layer by layer, in float64: chunks of 2 and 3 carry the traces across chunks."""
    monkeypatch.setattr("imc_osttp.rules.online.CHUNK_STEPS", chunk)
    batch = make_batch(1)
    cfg, net = network("ostl", f"model.reset={reset}", widths=widths)
    ostl, stats = compute_update(cfg.rule, net, batch)
    assert stats.spikes > 0
    L = len(widths)
    for layer in cfg.model.layers():
        params = leaf_params(net)
        loss = reference_loss(cfg, params, batch, detach_above=layer.index)
        for name in layer.names():
            grad = torch.autograd.grad(loss, params[name], retain_graph=True)[0]
            assert grad.norm() > 0, name
            assert rel_err(ostl[name], grad) <= 1e-9, name
    # the readout's local gradient, and the top layer's update, are the full gradient
    params = leaf_params(net)
    full = dict(zip(params, torch.autograd.grad(reference_loss(cfg, params, batch), list(params.values())),
                    strict=True))
    for name in (f"W{L + 1}", f"c{L + 1}", f"W{L}", f"b{L}"):
        assert rel_err(ostl[name], full[name]) <= 1e-9, name


def test_ostl_lower_layer_is_not_the_full_gradient():
    """The counterpart: eq. 7 drops the paths through the upper layers' future, so layer 1's update
    differs from BPTT's; the test above would pass vacuously if no such path existed."""
    batch = make_batch(2)
    bptt = compute_update(network("bptt")[0].rule, network("bptt")[1], batch)[0]
    cfg, net = network("ostl")
    ostl = compute_update(cfg.rule, net, batch)[0]
    assert rel_err(ostl["W1"], bptt["W1"]) > 1e-4
    assert rel_err(ostl["W2"], bptt["W2"]) <= 1e-9


# ------------------------------------------------------------------------------------------ BPTT


def _smooth_spike(v: torch.Tensor, surrogate: str) -> torch.Tensor:
    """tanh: a spike whose true derivative is the tanh surrogate 1 - tanh², so finite differences see
    what BPTT's surrogate backward computes."""
    return torch.tanh(v)


@pytest.mark.parametrize("reset,recurrent", [("full", "false"), ("soft", "true")])
def test_bptt_equals_finite_differences(reset, recurrent, monkeypatch):
    """With the Heaviside replaced by a smooth function whose derivative is the surrogate, BPTT through
    both layers and time is the derivative of the loss: every parameter against central differences.
    The eager loop (the reference that tests/test_fused.py holds the compiled one to) calls `spike`."""
    monkeypatch.setattr("imc_osttp.eager.spike", _smooth_spike)
    batch = make_batch(3, lengths=(5, 4))
    cfg, net = network("bptt", f"model.reset={reset}", f"model.recurrent={recurrent}", "train.engine=eager",
                       widths=[4, 3])
    grads = compute_update(cfg.rule, net, batch)[0]
    params = {k: v.detach() for k, v in net.backend.parameters().items()}
    h = 1e-6
    for name, value in params.items():
        fd = torch.zeros_like(value)
        for idx in itertools.product(*(range(n) for n in value.shape)):
            losses = []
            for sign in (1, -1):
                with torch.no_grad():
                    value[idx] += sign * h
                    logits, _ = net.forward(batch.x, differentiable=True)
                    losses.append(float((net.readout.loss(logits, batch.y) * batch.mask).sum()) / batch.size)
                    value[idx] -= sign * h
            fd[idx] = (losses[0] - losses[1]) / (2 * h)
        assert rel_err(grads[name], fd) <= 1e-6, name


# ----------------------------------------------------------------------------------------- OSTTP


def test_osttp_layer_update_ignores_every_other_layer_above_and_the_readout():
    """Locality in space: changing any layer above l, or the readout, leaves layer l's update bit-identical
    (OSTL's changes). Layers below reach it only as its input, checked by the next test."""
    batch = make_batch(4)
    widths = [7, 11, 6]
    for rule, local in (("osttp", True), ("ostl", False)):
        cfg, net = network(rule, widths=widths)
        before = compute_update(cfg.rule, net, batch)[0]
        params = net.backend.params
        with torch.no_grad():
            params["W4"].copy_(torch.randn_like(params["W4"]) * 3)
            params["c4"].add_(1.0)
            params["W3"].mul_(-2.0)
            params["b3"].add_(0.2)
        after = compute_update(cfg.rule, net, batch)[0]
        for name in ("W1", "b1", "W2", "b2"):
            assert torch.equal(before[name], after[name]) == local, (rule, name)


def test_osttp_layer_sees_lower_layers_only_through_its_input():
    """Layer 2 of a two-layer net updates exactly as a one-layer net fed with layer 1's spikes, given the
    same parameters and B_2: nothing but its input, its state and y* B_l enters (eq. 11)."""
    batch = make_batch(5)
    cfg, net = network("osttp")
    deep = compute_update(cfg.rule, net, batch)[0]
    with torch.no_grad():
        _, spikes = net.forward(batch.x)
    one_cfg = load_run_config(None, ["rule.name=osttp", "train.dtype=float64", f"model.hidden={WIDTHS[1]}",
                                     "model.threshold_init=0.3"])
    one = build_network(one_cfg, WIDTHS[0], K)
    p = net.backend.params
    with torch.no_grad():
        for src, dst in (("W2", "W1"), ("b2", "b1"), ("W3", "W2"), ("c3", "c2")):
            one.backend.params[dst].copy_(p[src])
        one.backend.B = net.split(net.backend.B)[1]
    fed = dataclasses.replace(batch, x=spikes[..., : WIDTHS[0]])
    shallow = compute_update(one_cfg.rule, one, fed)[0]
    assert rel_err(deep["W2"], shallow["W1"]) <= 1e-12 and rel_err(deep["b2"], shallow["b1"]) <= 1e-12


@pytest.mark.parametrize("reset", ["full", "soft"])
def test_osttp_is_the_gradient_of_the_projected_target_alignment(reset):
    """ΔW_l = d/dθ_l Σ_t ⟨y*^t B_l, y_l^t⟩ (exact traces, feed-forward layers), per layer."""
    batch = make_batch(6)
    cfg, net = network("osttp", f"model.reset={reset}")
    grads = compute_update(cfg.rule, net, batch)[0]
    params = leaf_params(net)
    with torch.enable_grad():
        state = net.init_state(batch.size, batch.x)
        saved = net.backend.params
        net.backend.params = params
        chunk, _ = net.run(batch.x, state, differentiable=True)
        net.backend.params = saved
    target = batch.y * batch.mask[..., None]
    for layer, lc, B_l in zip(net.layers, chunk.layers, net.split(net.backend.B), strict=True):
        objective = ((target @ B_l) * lc.y).sum() / batch.size
        for name in layer.names():
            grad = torch.autograd.grad(objective, params[name], retain_graph=True)[0]
            assert grad.norm() > 0
            assert rel_err(grads[name], grad) <= 1e-9, name


def test_drtp_uses_no_trace_in_any_layer():
    """DRTP's update of every layer is Σ_t x_l^tᵀ (ψ_l^t ⊙ y*^t B_l): step t alone, no memory."""
    batch = make_batch(7)
    cfg, net = network("drtp", widths=[7, 11, 6])
    grads = compute_update(cfg.rule, net, batch)[0]
    with torch.no_grad():
        chunk, _ = net.run(batch.x, net.init_state(batch.size, batch.x))
    target = batch.y * batch.mask[..., None]
    for layer, lc, B_l in zip(net.layers, chunk.layers, net.split(net.backend.B), strict=True):
        g = (target @ B_l) * lc.psi
        expected = torch.einsum("btm,btn->mn", lc.x, g) / batch.size
        assert rel_err(grads[layer.W], expected) <= 1e-12, layer.W
        assert rel_err(grads[layer.b], -g.sum((0, 1)) / batch.size) <= 1e-12, layer.b


@pytest.mark.parametrize("rule", ["ostl", "ostl_rnd", "drtp", "osttp"])
def test_feedback_matrices_are_independent_per_layer(rule):
    cfg, net = network(rule)
    B1, B2 = net.split(net.backend.B)
    assert B1.shape == (K, WIDTHS[0]) and B2.shape == (K, WIDTHS[1])
    one_cfg, one = network(rule, widths=WIDTHS[0])
    assert torch.equal(one.backend.B, B1)  # adding a layer keeps layer 1's B
    assert abs(float(torch.corrcoef(torch.stack([B1[:, :9].flatten(), B2.flatten()]))[0, 1])) < 0.5


@pytest.mark.parametrize("traces", ["exact", "factorised"])
def test_per_step_and_chunked_updates_agree_at_depth(traces, monkeypatch):
    """Per-step SGD at a tiny rate sums to the per-sequence update in every layer; chunking never matters."""
    batch = make_batch(8)
    results = []
    for chunk in (1, 3, 64):
        monkeypatch.setattr("imc_osttp.rules.online.CHUNK_STEPS", chunk)
        cfg, net = network("osttp", f"rule.traces={traces}", "model.recurrent=[true, false]",
                           "model.reset=[soft, full]", "model.decay=[0.9, 0.5]")
        results.append(compute_update(cfg.rule, net, batch)[0])
    for other in results[1:]:
        for name in results[0]:
            assert rel_err(other[name], results[0][name]) <= 1e-12, name
    cfg, net = network("osttp", f"rule.traces={traces}", "rule.update_timing=step", "optim.lr=1e-7",
                       "model.recurrent=[true, false]", "model.reset=[soft, full]", "model.decay=[0.9, 0.5]")
    w0 = {k: v.detach().clone() for k, v in net.backend.params.items()}
    assert compute_update(cfg.rule, net, batch)[0] == {}
    for name in ("W1", "H1", "W2", "W3"):
        moved = (w0[name] - net.backend.params[name].detach()) / 1e-7
        assert rel_err(moved, results[0][name]) < 1e-3, name


# ---------------------------------------------------------------------------------------- config


def test_one_hidden_layer_keeps_its_names_and_hash():
    from imc_osttp.config import config_hash
    from imc_osttp.network import param_names

    one = load_run_config(None, ["model.hidden=150", "model.recurrent=true"])
    assert param_names(one.model) == ["W1", "H1", "b1", "W2", "c2"]
    assert config_hash(one, {}) == config_hash(load_run_config(None, ["model.recurrent=true"]), {})
    deep = load_run_config(None, ["model.hidden=[5, 6, 7]", "model.recurrent=[true, false, true]"])
    assert param_names(deep.model) == ["W1", "H1", "b1", "W2", "b2", "W3", "H3", "b3", "W4", "c4"]


@pytest.mark.parametrize("override,message", [
    ("model.decay=[0.5, 0.6, 0.7]", "model.decay: 3 values for 2 hidden layer"),
    ("model.hidden=[]", "model.hidden"),
    ("optim.lr_scale={H1: 0.5}", "optim.lr_scale.H1: not a parameter of this model"),
])
def test_bad_depth_configs_are_one_clear_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, ["model.hidden=[4, 5]", override])


# ---------------------------------------------------------------------------------------- analog


@pytest.mark.parametrize("neuron,rule,traces", [("snu", "osttp", "exact"), ("snu", "osttp", "factorised"),
                                                ("snu", "ostl", "exact"), ("snu", "bptt", "exact"),
                                                ("alif", "osttp", "exact"), ("alif", "osttp", "factorised"),
                                                ("alif", "drtp", "exact"), ("alif", "bptt", "exact")])
def test_ideal_tiles_reproduce_digital_updates_of_two_layers(neuron, rule, traces):
    """Every W_l and H_l on its own tile, the stacked B_l on one programmed tile: with ideal devices two
    passes of updates land where the digital backend's do, for every neuron model."""
    pytest.importorskip("aihwkit")
    from imc_osttp.backends.analog import AnalogBackend
    from imc_osttp.data.batching import batches
    from imc_osttp.data.synthetic import synthetic_jsb

    overrides = [f"rule.name={rule}", f"rule.traces={traces}", "model.hidden=[12, 9]", f"model.neuron={neuron}",
                 "model.recurrent=[true, false]", "optim.lr=0.05", "data.task=synthetic",
                 "model.threshold_init=0.1", "model.init_gain=3.0"]
    nets = {}
    for kind in ("digital", "analog"):
        cfg = load_run_config(None, [*overrides, f"backend.kind={kind}", "backend.device_config=ideal",
                                     "backend.feedback_config=ideal"])
        nets[kind] = build_network(cfg, M, K)
    analog = nets["analog"].backend
    assert isinstance(analog, AnalogBackend)
    assert set(analog.tiles) == {"W1", "H1", "W2", "W3"}
    assert analog.B.weight().shape == (K, 21)
    start = {n: v.detach().clone() for n, v in nets["digital"].backend.parameters().items()}
    data = synthetic_jsb(4, 12).train
    for batch in batches(data, 2):
        batch.x, batch.y = batch.x[..., :M], batch.y[..., :K]
        for net in nets.values():
            grads, _ = compute_update(cfg.rule, net, batch)
            net.backend.apply(grads)
    for name, value in start.items():
        change = nets["digital"].backend.parameters()[name].detach() - value
        assert change.norm() > 0, name
        assert rel_err(analog.parameters()[name].detach() - value, change) <= 1e-5, name


def test_every_trainable_tile_of_a_deep_chip_counts_its_pulses():
    """pulses/W{l}, pulses/H{l} and their per-device maxima for every layer, the readout's too; a knob
    set for the run reaches every trainable tile. The rate puts every hidden tile's update well above one
    pulse step: aihwkit's read noise (not seedable) changes the spikes from run to run."""
    pytest.importorskip("aihwkit")
    from imc_osttp.data.batching import batches
    from imc_osttp.data.synthetic import synthetic_jsb

    cfg = load_run_config(None, ["rule.name=osttp", "model.hidden=[12, 9]", "model.recurrent=[false, true]",
                                 "optim.lr=5.0", "data.task=synthetic", "backend.kind=analog",
                                 "model.threshold_init=0.1", "model.init_gain=3.0",
                                 "backend.device_config=pcm_4device", "backend.knobs={dw_min: 0.02}"])
    net = build_network(cfg, M, K)
    tiles = net.backend.tiles
    assert set(tiles) == {"W1", "W2", "H2", "W3"}
    plain = build_network(cfg.model_copy(update={"backend": cfg.backend.model_copy(update={"knobs": {}})}), M, K)
    assert len({t.step for t in tiles.values()}) == 1
    assert {t.step for t in tiles.values()} != {t.step for t in plain.backend.tiles.values()}
    batch = next(iter(batches(synthetic_jsb(2, 16).train, 2)))
    batch.x, batch.y = batch.x[..., :M], batch.y[..., :K]
    net.backend.apply(compute_update(cfg.rule, net, batch)[0])
    metrics = net.backend.end_epoch()
    for name in ("W1", "W2", "H2", "W3"):
        assert metrics[f"pulses/{name}"] > 0, name
        assert metrics[f"pulses/{name}_max_device"] >= 1, name
