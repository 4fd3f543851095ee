"""YAML files found by name: the shipped studies and device configurations, and the folders
that users (IMC_OSTTP_DEVICE_CONFIGS) and plugins add.

A name (`jsb_quick`, `pcm_4device`) is looked up in an ordered list of places, the first
match winning; anything with a folder or a `.yaml` suffix is a path and used as it is. The
shipped files are package data (`imc_osttp.study_data`, `imc_osttp.device_data`, built from
the repository's `studies/` and `device_configs/` by setup.py), so a name resolves the same
in the checkout and in an installed wheel.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from .errors import ConfigError


def named_files(places: list[Path]) -> dict[str, Path]:
    """Name -> file over `places` (folders of YAML files, or single files), the first place winning."""
    found: dict[str, Path] = {}
    for place in places:
        candidates = sorted(place.glob("*.yaml")) if place.is_dir() else [place] if place.is_file() else []
        for path in candidates:
            found.setdefault(path.stem, path)
    return found


def find(name_or_path: str | Path, what: str, places: Callable[[], list[Path]]) -> Path:
    """The file a name or path stands for (names looked up in `places()`); a missing one is one
    line with the closest name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise ConfigError(f"{path}: no such {what} file")
        return path
    named = named_files(places())
    if path.name in named:
        return named[path.name]
    close = difflib.get_close_matches(str(name_or_path), list(named), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; available: {', '.join(sorted(named))}"
    raise ConfigError(f"{what} '{name_or_path}': not found{hint}")


def shipped_studies() -> list[Path]:
    """The folder of the shipped studies (package data)."""
    try:
        return [Path(str(files("imc_osttp.study_data")))]
    except ModuleNotFoundError:  # an editable install made before studies were package data
        raise ConfigError("the shipped studies (package imc_osttp.study_data) are not installed: "
                          "reinstall the package (bash scripts/setup.sh)") from None


def study_file(name_or_path: str | Path) -> Path:
    """A study, sweep or deploy file: a path, or the name of one shipped in `studies/` (`jsb_quick`)."""
    return find(name_or_path, "study", shipped_studies)


def config_file(name_or_path: str | Path) -> Path:
    """A run config: a path, or the name of one shipped in `studies/` (`jsb_osttp`)."""
    return find(name_or_path, "config", shipped_studies)


def studies() -> list[str]:
    """Names of the shipped studies, sweeps and deploy files."""
    return sorted(named_files(shipped_studies()))
