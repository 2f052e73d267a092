"""Run directories: one folder per run holding its config, results and environment."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

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


def write_json(path: str | Path, payload: Any) -> None:
    """Writes JSON atomically (temporary file, fsync, rename) so a crash never leaves half a file."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
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
