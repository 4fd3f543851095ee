"""Neuron models: each written once (imc_osttp/neurons/base.py) and run by both engines. The built-in ones
(snu.py, alif.py) register themselves as a plugin's would (imc_osttp.registry.register_neuron), so
`model.neuron` names any of them; the registry imports them when it is first read."""
