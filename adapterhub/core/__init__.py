"""Core types every layer uses: how a user names an adapter (:mod:`.refs`), progress of long work
(:mod:`.progress`) and where and in which dtype models run (:mod:`.hardware`).

Nothing here imports another layer of adapterhub; only :mod:`adapterhub.errors` sits below.
"""
