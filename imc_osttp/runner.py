"""One tracked training run: config → data → train → metrics → MLflow."""

from __future__ import annotations

import numpy as np

from .config import RunConfig
from .data import TaskData, load_task
from .tracking import start_run
from .training import RunResult, train


def final_parameters(result: RunResult) -> dict[str, np.ndarray]:
    if result.net is None:
        return {}
    params = result.net.backend.parameters()
    return {name: value.detach().cpu().numpy() for name, value in params.items()}


def run(cfg: RunConfig, data: TaskData | None = None, progress: bool = True) -> RunResult:
    """Train `cfg` (on `data`, else the task its config names), logged to MLflow as a run of its own when
    tracking is enabled (`RunResult.run_id`)."""
    data = data if data is not None else load_task(cfg.data)
    if not cfg.tracking.enabled:
        return train(cfg, data, progress=progress)
    with start_run(cfg) as logger:
        result = train(cfg, data, on_epoch=logger.on_epoch, progress=progress)
        logger.finish(final_parameters(result), result.best())
    result.run_id = logger.run_id
    return result
