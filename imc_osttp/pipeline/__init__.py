"""One experiment pipeline for `imc-osttp study`, `sweep` and `deploy` (docs/pipeline.md): a spec expands into
jobs (spec, axes), which run in the driver, a process pool or on Ray (executors, jobs), are recorded in the
results tables (record) and mirrored in MLflow (mirror) by one driver at a time (run), then reported (report,
figures)."""
