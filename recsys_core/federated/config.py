"""The configuration of a federated run, shared by the server, the clients and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from recsys_core.config import dataclass_from_dict, dataclass_to_dict
from recsys_core.data.config import DataConfig
from recsys_core.data.partitions import PartitionConfig
from recsys_core.errors import ConfigError
from recsys_core.experiment import ModelSection
from recsys_core.metrics import EvaluationConfig
from recsys_core.models import model_class
from recsys_core.models.base import ModelConfig, config_from_dict
from recsys_core.privacy.config import PrivacyConfig
from recsys_core.run_records import decode_infinity
from recsys_core.secure_aggregation.config import SUPPORTED_STRATEGIES, SecureAggregationConfig
from recsys_core.training import OptimizerName

StrategyName = Literal["fedavg", "fedadam", "fedyogi", "fedadagrad", "fedprox"]
AggregationName = Literal["mean", "median", "trimmed_mean"]


@dataclass(frozen=True)
class LocalTrainConfig:
    """What each device does with a training message."""

    epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 0.01
    weight_decay: float = 0.0
    optimizer: OptimizerName = "adam"
    #: Learning rate of the device's private parameters (user embedding); 0 uses ``learning_rate``.
    private_learning_rate: float = 0.0
    #: FedProx proximal term weight on the shared parameters (0: plain local training).
    proximal_mu: float = 0.0
    #: Epochs a device spends fitting only its private parameters (the user embedding) to the
    #: global model it has just received, before it ranks items. A device that was not sampled
    #: for training lately would otherwise rank with a stale or untrained user embedding.
    #: Nothing of this leaves the device; 0 ranks with the private state as last trained.
    private_refit_epochs: int = 0

    def validate(self) -> LocalTrainConfig:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ConfigError("local.epochs and local.batch_size must be positive")
        if self.learning_rate <= 0:
            raise ConfigError(f"local.learning_rate: must be positive, got {self.learning_rate}")
        if min(self.private_learning_rate, self.weight_decay, self.proximal_mu, self.private_refit_epochs) < 0:
            raise ConfigError(
                "local.private_learning_rate, weight_decay, proximal_mu and private_refit_epochs must not be negative"
            )
        return self


@dataclass(frozen=True)
class ServerConfig:
    """Rounds, client sampling and the aggregation strategy."""

    rounds: int = 20
    devices_per_round: int = 50
    #: A round counts only if at least this many sampled clients reply.
    min_devices: int = 1
    strategy: StrategyName = "fedavg"
    #: Server learning rate (FedAdam/FedYogi/FedAdagrad ``eta``; FedAvg scales the mean update by it,
    #: which matters for item embeddings that only a few sampled clients touch in a round).
    server_learning_rate: float = 10.0
    #: If positive, the server learning rate follows a cosine from ``server_learning_rate`` in round 1
    #: down to this in the last round; 0 keeps it constant.
    final_server_learning_rate: float = 0.0
    #: FedAdam/FedYogi/FedAdagrad's ``tau`` (Reddi et al., 2021): the server optimiser's epsilon,
    #: Flower's default 1e-3. A mean update far smaller than tau moves a weight by about
    #: ``eta * update / tau`` instead of ``eta``, which stalls item weights that few devices touch
    #: (large catalogues); centralized Adam uses 1e-8.
    adaptivity_tau: float = 1e-3
    #: Federated validation every this many rounds on ``devices_per_evaluation`` sampled clients.
    evaluate_every: int = 5
    devices_per_evaluation: int = 100
    #: Evaluate the final model on the test items of every client.
    final_evaluation: bool = True
    #: Seconds to wait for replies in one round.
    round_timeout: float = 600.0
    #: Seconds to wait at the start for one node per client before going on with those connected.
    connect_timeout: float = 30.0
    #: How plain (non-DP) updates combine: "mean" (FedAvg's example-weighted mean), or the
    #: coordinate-wise "median" or "trimmed_mean" of the updates (Yin et al., 2018; Flower's FedMedian
    #: and FedTrimmedAvg), which bound how far a few hostile devices can pull the model.
    aggregation: AggregationName = "mean"
    #: ``trimmed_mean``: the fraction of updates cut at each end of every coordinate.
    trim_fraction: float = 0.1
    #: Plain updates: one whose L2 norm is above this many times the round's median update norm is
    #: rejected as broken or hostile (honest devices measured at most 3.4x on ML-100K); 0 turns it off.
    update_norm_ratio: float = 10.0
    #: Plain updates: an absolute bound on an update's L2 norm; 0 means none.
    max_update_norm: float = 0.0

    def validate(self) -> ServerConfig:
        if self.rounds <= 0:
            raise ConfigError(f"server.rounds: must be positive, got {self.rounds}")
        if self.devices_per_round <= 0:
            raise ConfigError(f"server.devices_per_round: must be positive, got {self.devices_per_round}")
        if not 1 <= self.min_devices <= self.devices_per_round:
            raise ConfigError("server.min_devices: must be between 1 and server.devices_per_round")
        if self.server_learning_rate <= 0 or self.round_timeout <= 0:
            raise ConfigError("server.server_learning_rate and server.round_timeout must be positive")
        if not self.adaptivity_tau > 0:
            raise ConfigError(f"server.adaptivity_tau: must be positive, got {self.adaptivity_tau}")
        if self.evaluate_every < 0 or self.devices_per_evaluation < 0:
            raise ConfigError("server.evaluate_every and server.devices_per_evaluation must not be negative")
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"server.trim_fraction: must be in [0, 0.5), got {self.trim_fraction}")
        if self.update_norm_ratio < 0 or self.max_update_norm < 0:
            raise ConfigError("server.update_norm_ratio and server.max_update_norm must not be negative (0 turns "
                              "each off)")
        if 0 < self.update_norm_ratio <= 1:
            raise ConfigError(f"server.update_norm_ratio: must be above 1 (or 0: off), got {self.update_norm_ratio}; "
                              "at 1 half of the honest devices would be rejected")
        if not 0 <= self.final_server_learning_rate <= self.server_learning_rate:
            raise ConfigError(f"server.final_server_learning_rate: must be between 0 and server.server_learning_rate "
                              f"= {self.server_learning_rate}, got {self.final_server_learning_rate}")
        return self

    def learning_rate_at(self, server_round: int) -> float:
        """The server learning rate of ``server_round`` (1-based): constant, or the cosine schedule."""
        if self.final_server_learning_rate == 0 or self.rounds == 1:
            return self.server_learning_rate
        progress = min(max((server_round - 1) / (self.rounds - 1), 0.0), 1.0)
        span = self.server_learning_rate - self.final_server_learning_rate
        return self.final_server_learning_rate + span * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class SimulationEngineConfig:
    """How a simulation runs its devices on this machine."""

    #: "flower": Flower's simulation engine (Ray workers, real messages; the deployment's code path).
    #: "cohort": every device in one process, no framework between them and the server
    #: (server/cohort_engine.py): the same device code and aggregation, for large federations.
    engine: Literal["flower", "cohort"] = "flower"
    #: Cohort engine: run a round of one-step devices as one batched gradient, and evaluate devices
    #: without private parameters together (recsys_core/federated/cohort_batch.py). "auto" does where the
    #: config allows it (:meth:`FederatedConfig.one_step_blockers`); "on" refuses a config whose training
    #: cannot be batched; "off" runs every device alone.
    batching: Literal["auto", "on", "off"] = "auto"
    #: Cohort engine: torch threads of a batched round (0: one per core). A device's own update runs
    #: with ``torch_threads_per_device``, as on a Flower worker, so both engines compute it alike.
    cohort_threads: int = 0
    num_cpus_per_device: float = 1.0
    #: Ray workers; 0 lets each client take ``num_cpus_per_device`` of the machine.
    max_workers: int = 0
    torch_threads_per_device: int = 1
    #: Fault injection: these partitions raise on every training call (simulated broken devices).
    failing_partitions: tuple[int, ...] = ()
    #: Fault injection: each training call fails with this probability (seeded by run, round, partition).
    failure_probability: float = 0.0


@dataclass(frozen=True)
class FederatedConfig:
    """Everything a federated run needs; built once from TOML and flags, validated before Ray starts."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSection = field(default_factory=ModelSection)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    local: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationEngineConfig = field(default_factory=SimulationEngineConfig)
    #: Local DP-SGD and user-level DP-FedAvg; both off by default.
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    #: Masked, quantised updates the server can only add up; off by default.
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    seed: int = 0
    output_dir: str = "runs"
    #: False asks for a run without fedrec's protection (DP with secret noise, and secure aggregation
    #: unless each device adds local DP noise); checked where a run starts, and its results say NOT PRIVATE.
    private: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FederatedConfig:
        """Builds from a config file's or a run's ``config.json`` values (which spell infinity ``"Infinity"``)."""
        _refuse_renamed_keys(values)
        return dataclass_from_dict(cls, values, decoders={float: decode_infinity}, finite=True)

    def validate(self, num_devices: int | None = None, min_local_examples: int | None = None) -> FederatedConfig:
        """Checks every section; with ``num_devices`` also that the sampling fits the federation.

        ``min_local_examples`` (the fewest training samples on a device), when the caller
        knows it, enables the local-DP delta check up front; a device checks its own count
        again before it trains (:func:`recsys_core.federated.device.train_on_device`).
        """
        self.data.validate()
        self.partition.validate()
        self.local.validate()
        self.server.validate()
        self.evaluation.validate()
        self.model_config()
        if self.simulation.num_cpus_per_device <= 0 or self.simulation.torch_threads_per_device <= 0:
            raise ConfigError("simulation.num_cpus_per_device and torch_threads_per_device must be positive")
        if self.simulation.cohort_threads < 0:
            raise ConfigError(f"simulation.cohort_threads: must be 0 (one per core) or positive, got "
                              f"{self.simulation.cohort_threads}")
        if not 0.0 <= self.simulation.failure_probability < 1.0:
            raise ConfigError("simulation.failure_probability: must be in [0, 1)")
        if self.seed < 0:  # numpy's SeedSequence takes non-negative integers only
            raise ConfigError(f"seed: must not be negative, got {self.seed}")
        outside = [partition for partition in self.simulation.failing_partitions
                   if partition < 0 or (num_devices is not None and partition >= num_devices)]
        if outside:
            raise ConfigError(f"simulation.failing_partitions: {outside} name no device; the partitions are 0 to "
                              f"{'N - 1' if num_devices is None else num_devices - 1}")
        self._validate_counting_release()
        self.privacy.validate(num_users=num_devices, min_local_examples=min_local_examples,
                              devices_per_round=self.server.devices_per_round)
        if self.privacy.local.enabled:
            require_gradient_model(self.model.name, "privacy.local")
        if self.privacy.user_level.enabled:
            self.privacy.user_level.check_budget(self.server.rounds)
        if self.privacy.user_level.enabled and self.server.strategy not in ("fedavg", "fedadam"):
            # The server applies the noisy mean itself; only these two server optimisers are wired in.
            raise ConfigError(f"privacy.user_level: runs with server.strategy 'fedavg' or 'fedadam', "
                              f"got {self.server.strategy!r}")
        if self.server.aggregation != "mean" and (self.privacy.user_level.enabled or self.secure_aggregation.enabled):
            # The DP guarantee bounds one user's share of a sum, and secure aggregation gives only the sum.
            raise ConfigError(f"server.aggregation = {self.server.aggregation!r} needs each device's update in "
                              "clear: it cannot run with privacy.user_level or secure_aggregation; use 'mean'")
        self._validate_secure_aggregation()
        if self.simulation.engine == "cohort" and self.secure_aggregation.enabled:
            raise ConfigError("simulation.engine = 'cohort' does not simulate secure aggregation's masking yet; run "
                              "with simulation.engine = 'flower' (the default), or set secure_aggregation.enabled "
                              "= false to measure the model without it")
        if self.simulation.batching == "on" and (blockers := self.one_step_blockers()):
            raise ConfigError(f"simulation.batching = 'on' cannot run this config exactly: "
                              f"{'; '.join(blockers)}; set it to 'auto' to run these devices one by one")
        if num_devices is not None and self.server.devices_per_round > num_devices:
            raise ConfigError(
                f"server.devices_per_round = {self.server.devices_per_round} but the federation has only "
                f"{num_devices} devices; lower it or use a larger dataset"
            )
        return self

    def one_step_blockers(self) -> list[str]:
        """The options that keep the cohort engine from running a round as one batched gradient; empty when
        it can (one plain SGD step per device on shared parameters only)."""
        local, privacy = self.local, self.privacy
        model = model_class(self.model.name)
        blockers = []
        if self.simulation.engine != "cohort":
            blockers.append(f"simulation.engine = {self.simulation.engine!r} (only the cohort engine batches devices)")
        if local.epochs != 1:
            blockers.append(f"local.epochs = {local.epochs} (the batched path is one local step)")
        if local.optimizer != "sgd":
            blockers.append(f"local.optimizer = {local.optimizer!r} (a step of a stateful optimiser is not a "
                            "plain gradient step)")
        if local.weight_decay != 0:
            blockers.append("local.weight_decay (not folded into the batched gradient)")
        if privacy.local.enabled:
            blockers.append("privacy.local (each device draws its own Poisson batches and noise)")
        if privacy.user_level.enabled:
            blockers.append("privacy.user_level (each device clips its own update)")
        if self.server.aggregation != "mean":
            blockers.append(f"server.aggregation = {self.server.aggregation!r} (needs each device's update)")
        if not model.trains_with_gradients:
            blockers.append(f"model {self.model.name!r} (fitted by counting)")
        if model.private_modules and not model.user_id_keys:
            blockers.append(f"model {self.model.name!r} (keeps private parameters the batched path cannot stack)")
        if model.has_auxiliary_phase:
            blockers.append(f"model {self.model.name!r} (has an auxiliary training phase)")
        return blockers

    def privacy_shortfall(self) -> str | None:
        """Why this run does not protect its users, or None when it does.

        Protected means: differential privacy with noise from OS entropy, and the server
        never sees one device's update in the clear, either because secure aggregation hides
        it or because each device adds local DP noise itself (the mode for a device that
        trusts nobody).
        """
        privacy = self.privacy
        if not privacy.enabled:
            return "no differential privacy (privacy.user_level and privacy.local are both off)"
        if privacy.noise_source != "os_entropy":
            return "its DP noise comes from the run seed, which the server knows (privacy.noise_source)"
        if not privacy.local.enabled and not self.secure_aggregation.enabled:
            return ("the server sees every device's update in the clear (secure_aggregation is off and no device "
                    "adds local DP noise)")
        return None

    def require_private(self) -> FederatedConfig:
        """The check where a run starts: it protects its users, or says ``private = false``."""
        if self.private and (shortfall := self.privacy_shortfall()):
            raise ConfigError(
                f"this run is not private: {shortfall}. Turn privacy on (the main job, "
                f"simulations/configs/ml-100k/item_knn.toml, shows how; docs/privacy.md), or set private = false "
                f"(fedrec simulate --not-private) to run it anyway: its results will say NOT PRIVATE")
        return self

    def model_config(self) -> ModelConfig:
        """The model's options as its typed config (raises ConfigError naming a bad option)."""
        return config_from_dict(model_class(self.model.name).config_class, self.model.options)

    def released_arrays(self, server_round: int) -> tuple[str, ...] | None:
        """The shared arrays a round may change (a count-based model releases one part per round); None: all."""
        model = model_class(self.model.name)
        return None if model.trains_with_gradients else model.released_arrays(server_round)

    def _validate_counting_release(self) -> None:
        """A model fitted by counting releases each part of its statistics once, one part per round.

        Its devices send statistics, not trained parameters: another round would release
        the same sums again (spending privacy budget for nothing), and under a server
        learning rate that turns the mean into a sum it would no longer be one.
        """
        model = model_class(self.model.name)
        releases = self.model_config().statistics_rounds
        # Non-private Popularity may repeat its one release (the same mean each round), as it always could.
        repeats_harmlessly = releases == 1 and not self.privacy.user_level.enabled
        if not model.trains_with_gradients and self.server.rounds != releases and not repeats_harmlessly:
            raise ConfigError(f"server.rounds: model {self.model.name!r} is fitted by counting and releases its "
                              f"statistics in {releases} round(s); set server.rounds = {releases} "
                              f"(got {self.server.rounds})")

    def _validate_secure_aggregation(self) -> None:
        secure = self.secure_aggregation.validate()
        if not secure.enabled:
            return
        if self.server.strategy not in SUPPORTED_STRATEGIES:
            raise ConfigError(f"secure_aggregation: the server sees only the sum of the updates, which "
                              f"{self.server.strategy!r} cannot work from; use server.strategy "
                              f"{' or '.join(map(repr, SUPPORTED_STRATEGIES))}")
        user_level = self.privacy.user_level
        if user_level.enabled and user_level.noise_placement != "distributed":
            raise ConfigError("secure_aggregation with privacy.user_level: set privacy.user_level.noise_placement = "
                              "'distributed' (the server cannot clip updates it cannot see, so the devices add "
                              "the noise)")

    def to_json(self) -> str:
        return json.dumps(dataclass_to_dict(self), sort_keys=True)


#: Keys that said "client" for what fedrec calls a device everywhere else: the old name gets one clear error.
RENAMED_KEYS = {
    ("server", "clients_per_round"): "devices_per_round",
    ("server", "min_clients"): "min_devices",
    ("server", "clients_per_evaluation"): "devices_per_evaluation",
    ("simulation", "num_cpus_per_client"): "num_cpus_per_device",
    ("simulation", "torch_threads_per_client"): "torch_threads_per_device",
    ("partition", "users_per_client"): "users_per_device",
}


def _refuse_renamed_keys(values: dict[str, Any]) -> None:
    old = [(section, key) for section, key in RENAMED_KEYS if isinstance(values.get(section), dict)
           and key in values[section]]
    user_level = values.get("privacy", {}).get("user_level", {}) if isinstance(values.get("privacy"), dict) else {}
    if isinstance(user_level, dict) and "min_surviving_clients" in user_level:
        raise ConfigError("privacy.user_level.min_surviving_clients was renamed privacy.user_level."
                          "min_surviving_devices (one word, device, for one thing); rename it in your config")
    if old:
        section, key = old[0]
        raise ConfigError(f"{section}.{key} was renamed {section}.{RENAMED_KEYS[(section, key)]} (one word, device, "
                          "for one thing); rename it in your config")


def require_gradient_model(model_name: str, section: str = "privacy.local") -> None:
    """DP-SGD privatises gradient steps and DP-FedAvg clips float updates; a model fitted by counting has neither."""
    if not model_class(model_name).trains_with_gradients:
        raise ConfigError(
            f"{section}: model {model_name!r} is fitted by counting, not by gradient steps, so {section} "
            f"cannot make it private; disable {section} or choose a model that trains with gradients"
        )


@lru_cache(maxsize=8)
def config_from_json(text: str) -> FederatedConfig:
    """Parses the config the server sends with each message (cached: it is the same every round)."""
    return FederatedConfig.from_dict(json.loads(text))
