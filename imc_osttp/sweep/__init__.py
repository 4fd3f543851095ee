"""Device non-ideality sweeps: a YAML spec expands into points (spec), trained by a process pool or Ray
(executors) as nested MLflow runs under one parent (store, run), then tabulated and plotted (report)."""
