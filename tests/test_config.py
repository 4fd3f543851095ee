from __future__ import annotations

import pytest

from imc_osttp.config import config_hash, load_run_config
from imc_osttp.errors import ConfigError


def test_defaults_validate():
    cfg = load_run_config(None)
    assert cfg.rule.name == "osttp" and cfg.model.hidden == 150


def test_misspelled_key_names_key_and_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  decya: 0.5\n")
    with pytest.raises(ConfigError, match=r"model\.decya: unknown key; did you mean 'decay'"):
        load_run_config(path)


@pytest.mark.parametrize("override,key", [
    ("model.decay=1.5", "model.decay"),
    ("optim.lr=-1", "optim.lr"),
    ("rule.name=backprop", "rule.name"),
    ("train.batch_size=0", "train.batch_size"),
    ("model.reset=hard", "model.reset"),
    ("optim.lr_scale={W3: 0.1}", "optim.lr_scale.W3"),
    ("optim.lr_scale={W2: -1}", "optim.lr_scale.W2"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_run_config(None, [override])


def test_bptt_rejects_per_step_updates():
    with pytest.raises(ConfigError, match="update_timing"):
        load_run_config(None, ["rule.name=bptt", "rule.update_timing=step"])


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_run_config(None, ["optim.lr"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config"):
        load_run_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)


def test_unusable_device_is_a_config_error():
    from imc_osttp.builder import build_network

    with pytest.raises(ConfigError, match="train.device"):
        build_network(load_run_config(None, ["train.device=nonsense"]), 4, 4)
    with pytest.raises(ConfigError, match="analog backend runs on the CPU"):
        build_network(load_run_config(None, ["train.device=meta", "backend.kind=analog"]), 4, 4)


def test_config_hash_sees_changes_but_not_defaults():
    """Two configs that train the same thing share a hash, also when one spells out a default (so
    options added later, with defaults, keep earlier hashes); any changed value changes it."""
    base = config_hash(load_run_config(None), {})
    assert config_hash(load_run_config(None, ["optim.lr_scale={}", "model.decay=0.6"]), {}) == base
    assert config_hash(load_run_config(None, ["model.decay=0.5"]), {}) != base
    assert config_hash(load_run_config(None, ["optim.lr_scale={W2: 0.5}"]), {}) != base
    assert config_hash(load_run_config(None, ["name=other"]), {"name": True}) == base
