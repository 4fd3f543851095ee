"""Neuron models: each written once (imc_osttp/neurons/base.py) and run by both engines; registered
here as a plugin's are (imc_osttp.registry.register_neuron), so `model.neuron` names any of them."""

from __future__ import annotations

from ..registry import register_neuron
from .alif import ALIF
from .base import Neuron
from .snu import SNU

__all__ = ["ALIF", "SNU", "Neuron"]

register_neuron(SNU)
register_neuron(ALIF)
