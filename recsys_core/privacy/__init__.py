"""Differential privacy maths without Flower: accounting, DP-FedAvg clipping and noise, the privacy ledger.

- :mod:`.accountant`: epsilon of a noise schedule (Opacus RDP/PRV), JSON-safe state, budget checks.
- :mod:`.user_level`: DP-FedAvg update clipping, central and distributed noise, user-level epsilon.
- :mod:`.ledger`: the per-run privacy ledger, and recomputing its epsilons from the schedules alone.
- :mod:`.config`: the ``[privacy]`` config section and its checks (imports neither Opacus nor torch).
- :mod:`.names`: the names config and maths share.

Import from the submodules: this package imports nothing, so reading a config stays cheap.
"""
