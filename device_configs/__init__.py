"""The shipped device configurations; setup.py installs this folder as `imc_osttp.device_data`."""
