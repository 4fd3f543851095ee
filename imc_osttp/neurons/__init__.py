"""Neuron models: each written once (imc_osttp/neurons/base.py) and run by both engines."""

from __future__ import annotations

from .alif import ALIF
from .base import Neuron
from .snu import SNU

NEURONS: dict[str, Neuron] = {neuron.name: neuron for neuron in (SNU, ALIF)}
