"""The client SDK in an app, end to end: open the encrypted store, load the global model, record, recommend.

    python -m simulations.examples.sdk_quickstart [--bundle RUN_DIR/final-model] [--store user.store]

Without ``--bundle`` it first runs a 3-round federated simulation on the embedded
synthetic data (about 30 s) and uses its final model. Run it twice with the same
``--store``: the second run finds the first run's feedback and personal parameters.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from client.sdk.device import Device
from client.sdk.store import KeySource
from recsys_core.errors import FedrecError


def make_bundle(output: Path) -> Path:
    from recsys_core.config import read_toml
    from recsys_core.federated.config import FederatedConfig
    from server.simulate import run_federated_simulation

    values = read_toml("simulations/configs/synthetic/neumf.toml")
    values["server"].update({"rounds": 3, "evaluate_every": 0, "final_evaluation": False})
    values["output_dir"] = str(output)
    directory, _ = run_federated_simulation(FederatedConfig.from_dict(values))
    return directory.path / "final-model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="a global model bundle (a run directory's final-model/)")
    parser.add_argument("--store", default=str(Path(tempfile.gettempdir()) / "fedrec-quickstart.store"))
    parser.add_argument("--passphrase", default="correct horse battery staple",
                        help="in an app, ask the user or use a key from the OS keystore instead")
    args = parser.parse_args(argv)
    bundle = Path(args.bundle) if args.bundle else make_bundle(Path(tempfile.mkdtemp()))

    device = Device.open(args.store, KeySource.from_passphrase(args.passphrase))
    device.load_bundle(bundle)
    print("cold start (no history yet):" if not device.positives() else "returning user:",
          [r.item for r in device.recommend(k=5)])

    for item, kind, value in [("3", "purchase", None), ("17", "favourite", None), ("42", "rating", 5.0),
                              ("8", "view", None), ("9", "skip", None)]:
        device.record(item, kind, value=value)
    print("positives on the device:", device.positives())
    loss = device.personalise()
    print("personalised the user's own parameters on the device, loss", None if loss is None else round(loss, 4))
    for recommendation in device.recommend(k=5):
        print(f"  {recommendation.item:>6}  {recommendation.score:+.3f}")
    print("only the user's parameters changed; nothing left the device. Store:", args.store)
    return 0


def run(argv: list[str] | None = None) -> int:
    """:func:`main`, with the SDK's own errors (a damaged bundle or store, a wrong key) as one line."""
    try:
        return main(argv)
    except FedrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
