"""Package layout (metadata: pyproject.toml).

The top-level `device_configs/` folder, where readers find and edit the shipped
tile configurations, is installed as the package `imc_osttp.device_data`, so a
wheel holds the same files an editable install reads, without a second copy.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["imc_osttp*"]), "imc_osttp.device_data"],
    package_dir={"imc_osttp.device_data": "device_configs"},
    package_data={"imc_osttp.device_data": ["*.yaml"]},
)
