"""mkdocs hook (mkdocs.yml `hooks:`): the figures of results/ join the site as figures/<name>.png,
so the result pages show the committed figures without a second copy in docs/."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[1] / "results"


def on_files(files: Files, config) -> Files:
    for figure in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"figures/{figure.name}", abs_src_path=str(figure)))
    return files
