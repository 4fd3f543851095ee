"""Worked examples that use the toolkit outside its spiking networks (importable by the tests and the docs)."""
