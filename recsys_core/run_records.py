"""Run directories: one folder per run holding its config, results and environment."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_core.errors import FedrecError
from recsys_core.files import write_atomically

RECORDED_PACKAGES = ("fedrec", "torch", "numpy", "opacus", "flwr", "cryptography", "rich")


def new_run_directory(output_dir: str | Path, label: str) -> Path:
    """Creates ``output_dir/<UTC time>-<label>``, adding a suffix if that name is taken."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir) / f"{stamp}-{label}"
    candidate, suffix = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            suffix += 1
            candidate = base.with_name(f"{base.name}-{suffix}")


#: How an infinite number is written, as the privacy ledger writes an infinite epsilon (strict JSON has no
#: infinity). A run without differential privacy legitimately claims epsilon = infinity.
INFINITY_TEXT = {1: "Infinity", -1: "-Infinity"}


def decode_infinity(value: Any) -> Any:
    """The float a run record spells ``"Infinity"`` or ``"-Infinity"``; any other value unchanged."""
    for sign, text in INFINITY_TEXT.items():
        if value == text:
            return sign * math.inf
    return value


class NonFiniteValueError(FedrecError, ValueError):
    """A NaN on its way into a JSON file: it is no number, and strict JSON cannot hold it."""


def strict_json_values(payload: Any, where: str = "") -> Any:
    """``payload`` with every infinity as the text ``"Infinity"`` (or ``"-Infinity"``); a NaN raises.

    :class:`NonFiniteValueError` names where the NaN sits, as ``["test"]["sampled/ndcg@10"]``.
    """
    if isinstance(payload, (float, np.floating)):
        if math.isnan(payload):
            raise NonFiniteValueError(f"{where or 'the value'} is NaN")
        return INFINITY_TEXT[1 if payload > 0 else -1] if math.isinf(payload) else payload
    if isinstance(payload, dict):
        return {key: strict_json_values(value, f"{where}[{json.dumps(key) if isinstance(key, str) else key}]")
                for key, value in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [strict_json_values(value, f"{where}[{index}]") for index, value in enumerate(payload)]
    return payload


def strict_json_dumps(payload: Any, source: str | Path, **options: Any) -> str:
    """``json.dumps`` with ``allow_nan=False``: infinities as text, a NaN refused with its key and ``source``.

    Python otherwise writes a bare ``NaN`` or ``Infinity``, which no strict parser reads.
    """
    try:
        values = strict_json_values(payload)
    except NonFiniteValueError as error:
        raise NonFiniteValueError(f"{source}: {error}; a NaN is no result, so the file is not written") from None
    return json.dumps(values, allow_nan=False, **options)


def write_json(path: str | Path, payload: Any) -> None:
    """Writes strict JSON atomically (temporary file, fsync, rename) so a crash never leaves half a file.

    An infinity is written as ``"Infinity"``; a NaN anywhere in ``payload`` raises
    :class:`NonFiniteValueError` naming its key, and nothing is written.
    """
    text = strict_json_dumps(payload, path, indent=2, sort_keys=True, default=str) + "\n"
    write_atomically(path, lambda stream: stream.write(text.encode("utf-8")))


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide a run's numbers."""
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment_record() -> dict[str, Any]:
    """Python, platform, CPU and package versions, for the run's ``environment.json``."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
