"""Plugins: a learning rule, a task and device configurations added from outside the package.

In-process registrations first, through the public API (what validation accepts and refuses, that a
registered signal is what trains, that a registered task is what a run trains on), then a real plugin
package, pip-installed offline into a folder on PYTHONPATH and found through its `imc_osttp.plugins` entry
point, trained through the CLI and through `imc_osttp.train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
import yaml

import imc_osttp
from imc_osttp import ConfigError, PluginError, register_device_configs, register_rule, register_task, registry
from imc_osttp.builder import build_network
from imc_osttp.data import batches
from imc_osttp.data.synthetic import synthetic_jsb
from imc_osttp.rules import compute_update

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made by a test vanish with it."""
    reg = registry._read()
    monkeypatch.setattr(registry, "_REGISTRY", registry._Registry(
        dict(reg.rules), dict(reg.tasks), dict(reg.neurons), list(reg.device_configs), True, True))


def zero_signal(net, chunk, err, target):
    return [torch.zeros_like(lc.psi) for lc in chunk.layers]


def test_a_registered_rule_is_valid_config_and_its_signal_trains(clean_registry):
    with pytest.raises(ConfigError, match=r"rule\.name: Input should be .*'osttp' \(got 'frozen_hidden'\)"):
        imc_osttp.train({"rule": {"name": "frozen_hidden"}})
    register_rule("frozen_hidden", zero_signal)
    assert registry.rule_names()[-1] == "frozen_hidden"
    with pytest.raises(ConfigError, match=r"rule\.name: Input should be .*'osttp' or 'frozen_hidden'"):
        imc_osttp.train({"rule": {"name": "nope"}})

    data = synthetic_jsb(2, 6)
    batch = next(iter(batches(data.train, 2)))
    grads = {}
    for name in ("frozen_hidden", "osttp"):
        cfg = imc_osttp.RunConfig.model_validate({"rule": {"name": name}, "data": {"task": "synthetic"},
                                                  "model": {"hidden": 7}})
        grads[name], _ = compute_update(cfg.rule, build_network(cfg, data.n_in, data.n_out), batch)
    # the hidden layer learns only through the rule's signal; the readout's local gradient is the same
    assert grads["frozen_hidden"]["W1"].abs().max() == 0 and grads["osttp"]["W1"].abs().max() > 0
    torch.testing.assert_close(grads["frozen_hidden"]["W2"], grads["osttp"]["W2"])


def test_registration_errors_are_one_line(clean_registry):
    with pytest.raises(PluginError, match="rule 'osttp' is already registered"):
        register_rule("osttp", zero_signal)
    with pytest.raises(PluginError, match="traces must be"):
        register_rule("mine", zero_signal, traces="full")
    with pytest.raises(PluginError, match="must be callable"):
        register_task("mine", "not a loader")
    with pytest.raises(PluginError, match="name 'my rule'"):
        register_rule("my rule", zero_signal)
    with pytest.raises(PluginError, match="neither a folder nor a .yaml file"):
        register_device_configs(REPO / "README.md")


def test_a_registered_task_is_what_a_run_trains_on_and_names_its_readout(clean_registry):
    asked = []
    register_task("tiny_rolls", lambda cfg: asked.append(cfg) or synthetic_jsb(3, 5), readout="leaky")
    tiny = {"data": {"task": "tiny_rolls", "max_sequences": 2}, "model": {"hidden": 6},
            "train": {"epochs": 1}, "tracking": {"enabled": False}}
    with pytest.raises(ConfigError, match=r"model\.readout: the tiny_rolls task needs the 'leaky' readout"):
        imc_osttp.train(tiny)
    result = imc_osttp.train(tiny, {"model.readout": "leaky"}, progress=False)
    assert [cfg.max_sequences for cfg in asked] == [2] and len(result.history) == 1


def test_a_broken_plugin_is_one_line_naming_it(clean_registry, monkeypatch):
    broken = EntryPoint("broken", "no_such_module_here:register", registry.GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [broken] if group == registry.GROUP else [])
    registry._REGISTRY.plugins_loaded = False
    with pytest.raises(PluginError, match=r"plugin 'broken' \(no_such_module_here:register\) failed to load: "
                                          r"ModuleNotFoundError"):
        registry.rule_names()


PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "imc-osttp-demo-plugin"
        version = "0.1"

        [project.entry-points."imc_osttp.plugins"]
        demo = "imc_osttp_demo:register"

        [tool.setuptools]
        packages = ["imc_osttp_demo"]

        [tool.setuptools.package-data]
        imc_osttp_demo = ["devices/*.yaml"]
    """,
    "imc_osttp_demo/__init__.py": '''
        """A learning rule (the readout error's sign through B), a task (echo the input one step
        late) and a device configuration, registered through the entry point."""
        from pathlib import Path

        import torch

        import imc_osttp
        from imc_osttp.data import Split, TaskData
        from imc_osttp.rules.online import projected

        _error = projected("error")


        def sign_error(net, chunk, err, target):
            return _error(net, chunk, err.sign(), target)


        def echo(cfg):
            g = torch.Generator().manual_seed(0)
            count = cfg.max_sequences or 12
            rolls = [(torch.rand(9, 6, generator=g) < 0.3).float() for _ in range(3 * count)]
            splits = [Split([r[1:] for r in part], [r[:-1] for r in part])
                      for part in (rolls[:count], rolls[count:2 * count], rolls[2 * count:])]
            return TaskData("echo", *splits, 6, 6, "multilabel")


        def register():
            imc_osttp.register_rule("sign_error", sign_error)
            imc_osttp.register_task("echo", echo, readout="sigmoid")
            imc_osttp.register_device_configs(Path(__file__).parent / "devices")
    ''',
    "imc_osttp_demo/devices/demo_ideal.yaml": """
        description: the plugin's own device configuration
        rpu_config:
          class: SingleRPUConfig
          forward: {is_perfect: true}
          backward: {is_perfect: true}
          device: {class: IdealDevice}
    """,
}

TRAIN_IN_PYTHON = """
import json, sys
import imc_osttp
from imc_osttp import device_configs
result = imc_osttp.train(sys.argv[1], {"backend": {"kind": "analog", "device_config": "demo_ideal",
                                                   "feedback_config": "demo_ideal"}}, progress=False)
print(json.dumps({"history": result.history, "run_id": result.run_id,
                  "device_config": str(device_configs._resolve("demo_ideal"))}))
"""


@pytest.mark.timeout(300)
def test_an_installed_plugin_trains_its_rule_on_its_task_through_the_cli_and_python(tmp_path):
    source, site = tmp_path / "plugin", tmp_path / "site"
    for name, text in PLUGIN.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(textwrap.dedent(text).lstrip())
    # offline: no index, this environment's setuptools builds it
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True, cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    config = tmp_path / "echo.yaml"
    config.write_text(yaml.safe_dump({
        "name": "echo", "data": {"task": "echo", "max_sequences": 8},
        "model": {"hidden": 10, "decay": 0.5, "threshold_init": 0.2, "init_gain": 2.0},
        "rule": {"name": "sign_error"}, "optim": {"lr": 0.05}, "train": {"epochs": 4, "batch_size": 2}}))

    def python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], env=env, cwd=tmp_path, capture_output=True, text=True)

    cli = python("-m", "imc_osttp.cli", "train", str(config))
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("echo: best epoch") and "MLflow run" in cli.stdout
    bad = python("-m", "imc_osttp.cli", "train", str(config), "--set", "rule.name=sign_err")
    assert bad.returncode == 2 and "'osttp' or 'sign_error' (got 'sign_err')" in bad.stderr, bad.stderr

    api = python("-c", TRAIN_IN_PYTHON, str(config))
    assert api.returncode == 0, api.stderr
    out = json.loads(api.stdout.splitlines()[-1])
    assert out["run_id"] and Path(out["device_config"]).is_relative_to(site)  # the plugin's device configuration
    nll = [epoch["train_nll"] for epoch in out["history"]]
    assert len(nll) == 4 and nll[-1] < nll[0], nll  # the rule learns the task
