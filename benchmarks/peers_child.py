"""One training-throughput measurement of a peer library on our JSB or SHD network; prints one JSON line.

Runs inside the peers venv (~/.cache/imc-osttp/peers-venv: braintrace, brainstate, jax CPU, snntorch,
torch CPU), pinned to one thread, float32. `bench_peers.py` starts it once per measurement:

    python peers_child.py --impl {jax_bptt,braintrace_drtrl,braintrace_pp_prop,snntorch_bptt}
                          --network {jsb,shd} --T N [--batch 32] [--repeats 5]

One update = the whole batch of T-step sequences forward, its gradient, one SGD step. The JSON line
holds the median update time, sample-steps/s (batch * T / median), the first update's time
(`compile_s`: tracing and XLA compilation included) and `peak_mib`, the growth of peak RSS over a
baseline taken after imports, data and model construction, before the first update.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ["JAX_PLATFORMS"] = "cpu"
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

LR = 5e-4  # plain SGD, our default optimizer
WINDOW = 128  # steps per compiled braintrace call
JSB = {"n_in": 88, "n_hidden": 150, "n_out": 88, "decay": 0.6, "threshold": 0.2, "gain": 2.0}
# our SHD benchmark (bench_rules.py --network shd) keeps init_gain 1.0, as studies/shd_rules.yaml does
SHD = {"n_in": 700, "n_hidden": 450, "n_out": 20, "decay": 0.95, "threshold": 0.5, "gain": 1.0, "tau": 0.99}


def jsb_data(batch: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary piano-roll-like inputs [B, T, 88] (Bernoulli 4/88) and targets = the inputs one step later."""
    roll = (np.random.default_rng(0).random((batch, T + 1, 88)) < 4 / 88).astype(np.float32)
    return roll[:, :-1], roll[:, 1:]


def shd_data(batch: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Spikes [B, T, 700] (Bernoulli 0.1) and one label in 0..19 per sequence."""
    rng = np.random.default_rng(0)
    return (rng.random((batch, T, 700)) < 0.1).astype(np.float32), rng.integers(0, 20, batch)


def init_params(network: str) -> dict[str, np.ndarray]:
    """Uniform ±gain/sqrt(fan_in) weights, thresholds at their initial value, zero readout bias (JSB)."""
    rng = np.random.default_rng(1)
    cfg = JSB if network == "jsb" else SHD
    n_in, n, k = cfg["n_in"], cfg["n_hidden"], cfg["n_out"]

    def uniform(fan_in: int, fan_out: int) -> np.ndarray:
        bound = cfg["gain"] / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)

    p = {"W": uniform(n_in, n), "W2": uniform(n, k)}
    if network == "jsb":
        p["b"] = np.full(n, cfg["threshold"], np.float32)
        p["c"] = np.zeros(k, np.float32)
    else:
        p["H"] = uniform(n, n)
    return p


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(update: Callable[[], None], repeats: int) -> dict[str, float]:
    """Time the first update (compilation included), then the median of `repeats` more."""
    base = peak_rss_mib()
    start = time.perf_counter()
    update()
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        update()
        times.append(time.perf_counter() - start)
    return {"seconds": sorted(times)[len(times) // 2], "compile_s": compile_s, "peak_mib": peak_rss_mib() - base}


# ----------------------------------------------------------------------------------------------- JAX


def jax_spike(psi: Callable) -> Callable:
    """Heaviside(v > 0) whose derivative is psi(v)."""
    import jax

    @jax.custom_jvp
    def spike(v):
        return (v > 0).astype(v.dtype)

    @spike.defjvp
    def _(primals, tangents):
        (v,), (dv,) = primals, tangents
        return spike(v), psi(v) * dv

    return spike


def jax_psi_tanh(v):
    import jax.numpy as jnp

    return 1.0 - jnp.tanh(v) ** 2


def jax_psi_fast_sigmoid(v):
    import jax.numpy as jnp

    return 1.0 / (100.0 * jnp.abs(v) + 1.0) ** 2


def jax_bce(logits, target):
    """BCEWithLogits per element: softplus(l) - l y, whose derivative is exactly sigmoid(l) - y (also at
    l = 0, where the max/abs form's subgradients are wrong; the logits are exactly 0 before any spike)."""
    import jax

    return jax.nn.softplus(logits) - logits * target


def jax_loss(network: str) -> Callable:
    """loss(params, x [T, B, m], target) of the whole sequence: Σ_t Σ_k per-step loss, mean over the batch.
    The input and readout products are one batched matmul each; only the membrane recursion is scanned."""
    import jax
    import jax.numpy as jnp

    if network == "jsb":
        spike, decay = jax_spike(jax_psi_tanh), JSB["decay"]

        def loss(p, x, target):
            def step(carry, cur):
                s, y = carry
                s = cur + decay * s * (1.0 - y)
                y = spike(s - p["b"])
                return (s, y), y

            zeros = jnp.zeros((x.shape[1], JSB["n_hidden"]), x.dtype)
            _, Y = jax.lax.scan(step, (zeros, zeros), x @ p["W"])
            return jax_bce(Y @ p["W2"] + p["c"], target).sum() / x.shape[1]

        return loss

    spike, decay, b, tau = jax_spike(jax_psi_fast_sigmoid), SHD["decay"], SHD["threshold"], SHD["tau"]

    def loss(p, x, labels):
        def step(carry, cur):
            s, y = carry
            s = cur + y @ p["H"] + decay * s - y * b
            y = spike(s - b)
            return (s, y), y

        def leak(o, drive):
            o = tau * o + drive
            return o, o

        zeros = jnp.zeros((x.shape[1], SHD["n_hidden"]), x.dtype)
        _, Y = jax.lax.scan(step, (zeros, zeros), x @ p["W"])
        _, O = jax.lax.scan(leak, jnp.zeros((x.shape[1], SHD["n_out"]), x.dtype), Y @ p["W2"])
        logp = jax.nn.log_softmax(O, axis=-1)
        return -jnp.take_along_axis(logp, labels[None, :, None], axis=-1).sum() / x.shape[1]

    return loss


def jax_bptt(network: str, batch: int, T: int, repeats: int) -> dict:
    """BPTT in one jax.jit: scan over T, jax.grad of the summed loss, one SGD step."""
    import jax
    import jax.numpy as jnp

    x, target = jsb_data(batch, T) if network == "jsb" else shd_data(batch, T)
    x = jnp.asarray(x.transpose(1, 0, 2))  # time-major
    target = jnp.asarray(target.transpose(1, 0, 2) if network == "jsb" else target)
    params = {k: jnp.asarray(v) for k, v in init_params(network).items()}
    grad_fn = jax.grad(jax_loss(network))

    @jax.jit
    def train_step(p, x, target):
        g = grad_fn(p, x, target)
        norm = jnp.sqrt(sum(jnp.sum(v ** 2) for v in jax.tree.leaves(g)))
        return jax.tree.map(lambda w, d: w - LR * d, p, g), norm

    state = {"params": params}

    def update() -> None:
        state["params"], state["norm"] = train_step(state["params"], x, target)
        jax.block_until_ready(state["params"])

    out = measure(update, repeats)
    norm = float(state["norm"])
    trained = "W, b, W2, c" if network == "jsb" else "W, H, W2 (threshold fixed)"
    return {**out, "notes": f"plain JAX (lax.scan, custom_jvp spike), one jit per update; trains {trained}; "
                            f"input and readout products hoisted out of the scan; |grad| = {norm:.4g}"}


# ---------------------------------------------------------------------------------------- braintrace


def braintrace_online(algorithm: str, batch: int, T: int, repeats: int) -> dict:
    """braintrace's online rule on the JSB network: `etrace_grad` over windows of WINDOW steps, each window
    one jitted call that carries hidden state and traces on to the next; gradients summed over the
    sequence, one SGD step at the end."""
    import brainstate
    import braintools
    import braintrace
    import jax
    import jax.numpy as jnp

    class TanhGrad(braintools.surrogate.Surrogate):
        """Heaviside forward, psi(v) = 1 - tanh(v)^2 backward."""

        def surrogate_grad(self, v):
            return jax_psi_tanh(v)

    p0 = {k: jnp.asarray(v) for k, v in init_params("jsb").items()}

    class SNULayer(brainstate.nn.Module):
        """The SNU with full reset, its one hidden state the shifted membrane v = s - b:
        v_t = x_t W + decay (v_{t-1} + b)(1 - Θ(v_{t-1})) - b, y_t = Θ(v_t); W and b routed through ETP ops.
        (With s and y as two hidden states braintrace counts the path s -> y twice, and with s alone
        it drops the output's direct dependence on b.) `after_first` drops the leak term at t = 1, where
        the previous membrane is the constant s_0 = 0: the traces start at zero, so v_0 = -b as a stored
        value would give b a wrong derivative there."""

        def __init__(self) -> None:
            super().__init__()
            self.W = brainstate.ParamState(p0["W"])
            self.b = brainstate.ParamState(p0["b"])
            self.spike = TanhGrad()

        def init_state(self, batch_size: int | None = None, **kwargs) -> None:
            self.v = brainstate.HiddenState(jnp.zeros((batch_size, JSB["n_hidden"]), jnp.float32))
            self.after_first = brainstate.ShortTermState(jnp.zeros((), jnp.float32))

        def reset_state(self, batch_size: int | None = None, **kwargs) -> None:
            self.v.value = jnp.zeros_like(self.v.value)
            self.after_first.value = jnp.zeros((), jnp.float32)

        def update(self, x):
            b = braintrace.element_wise(self.b.value)
            v_prev = self.v.value
            leak = self.after_first.value * JSB["decay"] * (v_prev + b) * (1.0 - self.spike(v_prev))
            v = braintrace.matmul(x, self.W.value) + leak - b
            self.v.value = v
            self.after_first.value = jnp.minimum(self.after_first.value + 1.0, 1.0)
            return self.spike(v)

    x, target = jsb_data(batch, T)
    n_win = -(-T // WINDOW)
    xs = [jnp.asarray(x[:, i * WINDOW:(i + 1) * WINDOW].transpose(1, 0, 2)) for i in range(n_win)]
    ys = [jnp.asarray(target[:, i * WINDOW:(i + 1) * WINDOW].transpose(1, 0, 2)) for i in range(n_win)]
    layer = SNULayer()
    options = {"decay_or_rank": JSB["decay"]} if algorithm == "pp_prop" else {}
    start = time.perf_counter()
    learner = braintrace.compile(layer, algorithm, xs[0][0], batch_size=batch, **options)
    graph_s = time.perf_counter() - start
    # The readout lives in the loss, outside the learner: under vjp_method='single-step' braintrace 0.2.6
    # returns zero gradients for a ParamState that reaches no hidden state (split_dict_states_v2 files
    # every ParamState as an ETP weight and the single-step VJP differentiates none of them).
    W2, c = brainstate.ParamState(p0["W2"]), brainstate.ParamState(p0["c"])
    weights = {**learner.param_states, ("W2",): W2, ("c",): c}

    def step_loss(x_t, target_t):
        y = learner(x_t)
        return jax_bce(y @ W2.value + c.value, target_t).sum() / batch

    @brainstate.transform.jit
    def start_sequence() -> None:
        layer.reset_state()
        learner.reset_state()

    @brainstate.transform.jit
    def window(x_w, target_w, acc):
        g = learner.etrace_grad(x_w, target_w, step_fn=step_loss, weights=weights, reduction="sum")
        return jax.tree.map(jnp.add, acc, g)

    @brainstate.transform.jit
    def sgd(grads) -> None:
        for key, st in weights.items():
            st.value = st.value - LR * grads[key]

    def gradients():
        start_sequence()
        acc = {k: jnp.zeros_like(st.value) for k, st in weights.items()}
        for x_w, t_w in zip(xs, ys, strict=True):
            acc = window(x_w, t_w, acc)
        return acc

    def update() -> None:
        sgd(gradients())
        jax.block_until_ready([st.value for st in weights.values()])

    out = measure(update, repeats)
    norms = {"/".join(k): float(jnp.linalg.norm(v)) for k, v in gradients().items()}  # after the measurement
    rule = ("D_RTRL (per-parameter diagonal traces, exact for this feed-forward layer)" if algorithm == "d_rtrl"
            else f"pp_prop / ES-D-RTRL (io-factorised traces, decay_or_rank={JSB['decay']})")
    return {**out, "graph_build_s": graph_s,
            "notes": f"braintrace.compile(layer, '{algorithm}', x0, batch_size={batch}) took {graph_s:.1f} s "
                     f"(before the baseline, not in compile_s); {rule}; vjp_method single-step, "
                     f"etrace_grad(chunk_size=None, reduction='sum') driven step by step inside {n_win} "
                     f"jitted window call(s) of {WINDOW} steps, gradients summed, one SGD step per sequence; "
                     "readout W2, c exact and instantaneous in step_fn (not ETP weights: see the source); "
                     "one hidden state per neuron, the shifted membrane v = s - b (same forward); "
                     "surrogate a braintools.surrogate.Surrogate subclass (Heaviside v >= 0, ours v > 0); "
                     f"|grad| {', '.join(f'{k} {v:.4g}' for k, v in norms.items())}"}


# ------------------------------------------------------------------------------------------- snntorch


def snntorch_bptt(batch: int, T: int, repeats: int) -> dict:
    """snntorch's Leaky neuron with reset to zero (= the SNU's full reset) and a learnable per-neuron
    threshold, trained by BPTT in torch eager mode: loop over T, loss.backward(), one SGD step."""
    import snntorch as snn
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)

    class TanhSpike(torch.autograd.Function):
        """Heaviside(v > 0) forward, 1 - tanh(v)^2 backward."""

        @staticmethod
        def forward(ctx, v):
            ctx.save_for_backward(v)
            return (v > 0).to(v.dtype)

        @staticmethod
        def backward(ctx, grad):
            (v,) = ctx.saved_tensors
            return grad * (1.0 - torch.tanh(v) ** 2)

    p0 = {k: torch.from_numpy(v) for k, v in init_params("jsb").items()}
    fc1 = torch.nn.Linear(88, JSB["n_hidden"], bias=False)
    fc2 = torch.nn.Linear(JSB["n_hidden"], 88)
    with torch.no_grad():
        fc1.weight.copy_(p0["W"].T)
        fc2.weight.copy_(p0["W2"].T)
        fc2.bias.copy_(p0["c"])
    lif = snn.Leaky(beta=JSB["decay"], threshold=p0["b"].clone(), learn_threshold=True,
                    spike_grad=TanhSpike.apply, reset_mechanism="zero")
    params = [fc1.weight, lif.threshold, fc2.weight, fc2.bias]
    opt = torch.optim.SGD(params, lr=LR)
    x, target = (torch.from_numpy(a) for a in jsb_data(batch, T))

    def loss_fn() -> torch.Tensor:
        cur = fc1(x)  # [B, T, n]: the input product for every step at once
        mem = torch.zeros(batch, JSB["n_hidden"])
        spikes = []
        for t in range(T):
            spk, mem = lif(cur[:, t], mem)
            spikes.append(spk)
        return F.binary_cross_entropy_with_logits(fc2(torch.stack(spikes, 1)), target, reduction="sum") / batch

    def update() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()

    out = measure(update, repeats)
    norm = float(torch.sqrt(sum((q.grad ** 2).sum() for q in params)))  # of the last update
    return {**out, "notes": "snn.Leaky(reset_mechanism='zero', learn_threshold=True, custom tanh surrogate): "
                            "the forward is the SNU's, but snntorch detaches the reset (no gradient through "
                            "y_{t-1} in the reset term, which ours and JAX BPTT keep); input and readout "
                            f"products hoisted out of the loop; torch eager, 1 thread; |grad| = {norm:.4g}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", required=True,
                    choices=["jax_bptt", "braintrace_drtrl", "braintrace_pp_prop", "snntorch_bptt"])
    ap.add_argument("--network", choices=["jsb", "shd"], default="jsb")
    ap.add_argument("--T", type=int, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.network == "shd" and args.impl != "jax_bptt":
        ap.error("--network shd is measured for --impl jax_bptt only")
    if args.impl == "jax_bptt":
        out = jax_bptt(args.network, args.batch, args.T, args.repeats)
    elif args.impl == "snntorch_bptt":
        out = snntorch_bptt(args.batch, args.T, args.repeats)
    else:
        out = braintrace_online(args.impl.removeprefix("braintrace_").replace("drtrl", "d_rtrl"),
                                args.batch, args.T, args.repeats)
    print(json.dumps({"impl": args.impl, "network": args.network, "T": args.T, "batch": args.batch,
                      "sample_steps_per_s": args.batch * args.T / out["seconds"], **out}))


if __name__ == "__main__":
    main()
