"""The shipped studies, sweeps and deploy files; setup.py installs this folder as `imc_osttp.study_data`."""
