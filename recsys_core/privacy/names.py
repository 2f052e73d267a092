"""The names the privacy config and the privacy maths share, in a module that imports no Opacus or torch.

The run config is parsed in processes that never train (the CLI, the server before
Ray starts); importing Opacus there would cost more than a second for three names.
"""

from __future__ import annotations

from typing import Literal, get_args

#: Opacus's accountants this project supports: Renyi DP and privacy random variables (tighter, slower).
AccountantName = Literal["rdp", "prv"]
ACCOUNTANT_NAMES: tuple[str, ...] = get_args(AccountantName)

#: ``central``: the server adds all the noise to the sum; ``distributed``: each client adds a share.
NoisePlacement = Literal["central", "distributed"]
NOISE_PLACEMENTS: tuple[str, ...] = get_args(NoisePlacement)

#: How the server picks the clients of a round.
#: ``poisson``: each client joins independently with probability devices_per_round / num_devices.
#: ``fixed_size``: exactly devices_per_round clients, drawn without replacement (what Flower's
#: strategies and ``recsys_core.federated.sampling`` do).
ClientSampling = Literal["poisson", "fixed_size"]
