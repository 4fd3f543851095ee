"""Package layout (metadata: pyproject.toml).

The top-level folders where readers find and edit the shipped files are installed as
packages, so a wheel holds the same files an editable install reads, without a second
copy: `device_configs/` (the tile configurations) as `imc_osttp.device_data`, and
`studies/` (studies, sweeps, deploy files) as `imc_osttp.study_data`. Both resolve by
name (imc_osttp/named.py): `imc-osttp study jsb_quick` works outside the checkout.
"""

from setuptools import find_packages, setup

DATA = {"imc_osttp.device_data": "device_configs", "imc_osttp.study_data": "studies"}

setup(
    packages=[*find_packages(include=["imc_osttp*"]), *DATA],
    package_dir=DATA,
    package_data={package: ["*.yaml"] for package in DATA},
)
