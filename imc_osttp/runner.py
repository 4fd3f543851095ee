"""One tracked training run: config → data → train → metrics → MLflow."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from .config import RunConfig
from .data import TaskData, load_task
from .tracking import start_run
from .train import RunResult, train


def final_parameters(result: RunResult) -> dict[str, np.ndarray]:
    if result.net is None:
        return {}
    params = result.net.backend.parameters()
    return {name: value.detach().cpu().numpy() for name, value in params.items()}


def run(cfg: RunConfig, data: TaskData | None = None, experiment: str | None = None,
        parent_run_id: str | None = None, progress: bool = True,
        extra_tags: dict[str, str] | None = None, variant: str | None = None) -> tuple[RunResult, str | None]:
    """Train `cfg`, logging to MLflow (a run named by `variant` and seed) when tracking is enabled;
    returns the result and the run id."""
    data = data if data is not None else load_task(cfg.data)
    tracked = (start_run(cfg, experiment, parent_run_id, extra_tags, variant) if cfg.tracking.enabled
               else nullcontext())
    with tracked as logger:
        result = train(cfg, data, on_epoch=logger.on_epoch if logger else None, progress=progress)
        if logger is not None:
            logger.finish(final_parameters(result), result.best())
            return result, logger.run_id
    return result, None
