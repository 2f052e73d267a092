"""The ``[data]`` section of every run and its one validator, shared by ``fedrec train`` and ``fedrec simulate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recsys_core.audit.canaries import CanaryConfig
from recsys_core.data.preprocessing import PreprocessingConfig
from recsys_core.data.registry import get_dataset_spec
from recsys_core.data.splits import SplitConfig
from recsys_core.data.synthetic import SyntheticConfig
from recsys_core.errors import ConfigError

SYNTHETIC_DATASET = "synthetic"
GENERIC_FILE_DATASET = "file"


@dataclass(frozen=True)
class DataConfig:
    """Where interactions come from and how they are prepared.

    ``dataset`` is a registered name (``fedrec datasets list``), ``synthetic``, or
    ``file`` for your own CSV/TSV/Parquet log at ``path`` with a column mapping
    ``columns`` (keys ``user``, ``item``, optional ``rating`` and ``timestamp``).
    """

    dataset: str = SYNTHETIC_DATASET
    data_dir: str | None = None
    download: bool = False
    path: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    #: Audit canaries planted in the training split (``fedrec simulate --audit-canaries M``).
    canaries: CanaryConfig = field(default_factory=CanaryConfig)

    def validate(self) -> DataConfig:
        """Checks the section before any data is read; a bad value raises :class:`ConfigError` naming its key."""
        self.preprocessing.validate()
        self.split.validate()
        self.canaries.validate()
        if self.dataset == SYNTHETIC_DATASET:
            self.synthetic.validate()
        elif self.dataset == GENERIC_FILE_DATASET:
            if not self.path:
                raise ConfigError("data.path: required when data.dataset = 'file'")
        else:
            get_dataset_spec(self.dataset)
        return self
