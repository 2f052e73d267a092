"""What a SuperNode's node config tells its ClientApp."""

from __future__ import annotations

from flwr.app import Context


def node_partition_id(context: Context) -> int:
    """The dataset partition (simulated device) this node holds: its node config's ``partition-id``."""
    try:
        return int(context.node_config["partition-id"])
    except KeyError:
        raise RuntimeError("this SuperNode has no 'partition-id' in its node config; start it with "
                           "--node-config \"partition-id=N num-partitions=M\"") from None
