"""The ``[data]`` section of every run and its one validator, shared by ``fedrec train`` and ``fedrec simulate``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, get_args

from recsys_core.audit.canaries import CanaryConfig
from recsys_core.config import dataclass_from_dict
from recsys_core.data.generic import ColumnMapping, FileFormatSetting, normalized_encoding
from recsys_core.data.parsing import is_text_encoding
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
    ``file_format`` (``auto``: from the extension) and ``encoding`` (of a CSV/TSV
    file) apply to ``file`` only: a registered dataset knows its own.
    """

    dataset: str = SYNTHETIC_DATASET
    data_dir: str | None = None
    download: bool = False
    path: str | None = None
    columns: dict[str, Any] = field(default_factory=dict)
    file_format: FileFormatSetting = "auto"
    encoding: str = "utf-8"
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
        if self.file_format not in get_args(FileFormatSetting):
            allowed = ", ".join(repr(value) for value in get_args(FileFormatSetting))
            raise ConfigError(f"data.file_format: {self.file_format!r} is not one of {allowed}")
        if not is_text_encoding(self.encoding):
            raise ConfigError(f"data.encoding: unknown text encoding {self.encoding!r} (e.g. \"utf-8\", \"latin-1\")")
        if self.file_format == "parquet" and normalized_encoding(self.encoding) != "utf-8":
            raise ConfigError("data.encoding: a Parquet file stores its text as UTF-8; leave data.encoding unset")
        if self.dataset == GENERIC_FILE_DATASET:
            if not self.path:
                raise ConfigError("data.path: required when data.dataset = 'file'")
            dataclass_from_dict(ColumnMapping, self.columns, prefix="data.columns.").validate()
            return self
        changed = [key for key, is_default in (("file_format", self.file_format == "auto"),
                                               ("encoding", normalized_encoding(self.encoding) == "utf-8"))
                   if not is_default]
        if changed:
            raise ConfigError(f"data.{changed[0]}: applies to data.dataset = 'file' only; "
                              f"dataset {self.dataset!r} knows its own format and encoding")
        if self.dataset == SYNTHETIC_DATASET:
            self.synthetic.validate()
        else:
            get_dataset_spec(self.dataset)
        return self
