"""The weights: the one frozen base (:mod:`.base`: materialise, fingerprint, load) and LoRA adapter
files (:mod:`.adapters`: read them safely, check that they fit a base).

Above :mod:`adapterhub.core`; below the registry, the engine and training.
"""
