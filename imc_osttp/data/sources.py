"""Finding a data file: config path, IMC_OSTTP_DATA, the user cache, then a verified download.

Machines without a network get one clear line saying where we looked and what
to do; machines with one download once into the cache, checksum verified.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir

from ..errors import DataError

ENV_VAR = "IMC_OSTTP_DATA"


@dataclass(frozen=True)
class RemoteFile:
    """A dataset file: its name, where to download it, and its sha256."""

    name: str
    url: str
    sha256: str | None
    subdir: str = ""  # where it sits below a data directory, e.g. "jsb"


def cache_dir() -> Path:
    return Path(os.environ.get("IMC_OSTTP_CACHE", user_cache_dir("imc-osttp")))


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, remote: RemoteFile) -> Path:
    if remote.sha256 is not None and sha256sum(path) != remote.sha256:
        raise DataError(f"{path}: checksum mismatch for {remote.name} (corrupt or a different version); "
                        f"delete it or point the config's data.path at a good copy")
    return path


def download(remote: RemoteFile, dest: Path) -> Path:
    """Download to a temporary file, verify the checksum, then move into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        tmp_path = Path(tmp.name)
    try:
        with urllib.request.urlopen(remote.url, timeout=60) as response, tmp_path.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        verify(tmp_path, remote)
        tmp_path.replace(dest)
    finally:
        tmp_path.unlink(missing_ok=True)
    return dest


def candidates(remote: RemoteFile, configured: str | None) -> list[Path]:
    """The places we look, in order. A configured path is the user's explicit choice: only it is searched."""
    places: list[Path] = []
    if configured:
        p = Path(configured).expanduser()
        return [p] if p.suffix else [p / remote.name, p / remote.subdir / remote.name]
    if os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR]).expanduser()
        places += [root / remote.name, root / remote.subdir / remote.name]
    places.append(cache_dir() / remote.name)
    return places


def locate(remote: RemoteFile, configured: str | None = None, allow_download: bool = True) -> Path:
    """Return a verified local copy of `remote`, downloading into the cache as a last resort."""
    places = candidates(remote, configured)
    for i, path in enumerate(places):
        if path.is_file():
            # a file the user named explicitly may be their own variant: the parser checks it
            return path if configured and i == 0 and Path(configured).suffix else verify(path, remote)
    if configured:  # an explicit path that does not exist is a mistake, not a cue to download
        raise DataError(f"{remote.name}: not found at {configured}; fix data.path or unset it")
    if allow_download:
        try:
            return download(remote, places[-1])
        except DataError:
            raise
        except OSError as exc:
            reason = f"download from {remote.url} failed ({exc.__class__.__name__}: {exc})"
    else:
        reason = "downloads are off"
    looked = ", ".join(str(p) for p in places)
    raise DataError(f"{remote.name}: not found (looked in {looked}); {reason}. Put the file in one of "
                    f"those places, set {ENV_VAR} to its directory, or give data.path")
