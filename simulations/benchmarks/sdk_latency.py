"""On-device recommendation latency, bundle size and memory of the client SDK, per model.

For each model: a bundle sized for the Amazon Beauty catalogue (12,101 items; the
weights are untrained, which does not change the cost of scoring), a device with an
encrypted store and 20 positives, then ``recommend(k=10)`` timed ``--repeats`` times on
one CPU thread after one warm-up call (which also personalises). Each model runs in its
own process so resident memory is that model's alone. Content-based and hybrid models
need item features, which Amazon Beauty lacks: they run on a catalogue of the same size
with 20 random binary features. A model name may carry device-side overrides, as in
``mult_dae:ranking_dtype=float16``.

Each model is timed twice, in two processes: with glibc's default allocator settings, and
with ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 MiB. By default glibc serves blocks above a
threshold that moves at run time (128 KiB at first) with fresh ``mmap`` pages, so a
scoring call whose temporaries are a few MB can page-fault on every call, or not,
depending on what the process freed before: the same code measured 0.9 or 2.5 ms.
The fixed threshold shows the cost without that effect; an app can set it the same way.

    python -m simulations.benchmarks.sdk_latency [--models neumf sasrec ...] [--repeats 500]

Prints JSON lines and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BEAUTY_ITEMS = 12_101
MODELS_WITH_FEATURES = ("content", "hybrid")
DEFAULT_MODELS = ("neumf", "sasrec", "gru4rec", "caser", "mult_dae", "mult_dae:ranking_dtype=float16", "mult_vae",
                  "mult_vae:ranking_dtype=float16", "irgan", "content", "hybrid")
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(64 * 2**20)}


def parse_variant(variant: str) -> tuple[str, dict[str, str]]:
    """``"mult_dae:ranking_dtype=float16"`` -> ``("mult_dae", {"ranking_dtype": "float16"})``."""
    model_name, _, overrides = variant.partition(":")
    return model_name, dict(item.split("=", 1) for item in overrides.split(",") if item)


def measure(variant: str, repeats: int) -> dict[str, float | str]:
    import torch

    from client.sdk.device import Device
    from client.sdk.store import KeySource
    from recsys_core.bundle import ModelBundle, write_bundle
    from recsys_core.federated.state import state_to_arrays
    from recsys_core.models import CatalogInfo, build_model

    torch.set_num_threads(1)
    model_name, overrides = parse_variant(variant)
    rng = np.random.default_rng(0)
    features = (rng.random((BEAUTY_ITEMS, 20)) < 0.1).astype(np.float32) if model_name in MODELS_WITH_FEATURES \
        else None
    model = build_model(model_name, CatalogInfo(1, BEAUTY_ITEMS, features))
    catalog = {"item_ids": np.array([f"B{i:09d}" for i in range(BEAUTY_ITEMS)]),
               "item_popularity": rng.integers(0, 100, BEAUTY_ITEMS).astype(np.float64)}
    if features is not None:
        catalog["item_features"] = features
    with tempfile.TemporaryDirectory() as folder:
        bundle = write_bundle(Path(folder) / "bundle", ModelBundle(model_name, {}, BEAUTY_ITEMS,
                                                                   state_to_arrays(model.shared_state()), {}, catalog))
        bundle_bytes = sum(path.stat().st_size for path in bundle.iterdir())
        device = Device.open(Path(folder) / "user.store", KeySource.from_app_key(bytes(32)),
                             model_overrides=overrides)
        device.load_bundle(bundle)
        for step, item in enumerate(rng.choice(BEAUTY_ITEMS, 20, replace=False)):
            device.record(f"B{item:09d}", "purchase", timestamp=step)
        device.recommend(k=10)  # warm-up; fits the user's parameters to the 20 positives
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            device.recommend(k=10)
            seconds.append(time.perf_counter() - started)
    rss_kib = int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                       if line.startswith("VmHWM:")))
    milliseconds = 1000 * np.array(seconds)
    return {"model": variant, "p50_ms": float(np.percentile(milliseconds, 50)),
            "p99_ms": float(np.percentile(milliseconds, 99)), "bundle_mb": bundle_bytes / 1e6,
            "peak_rss_mb": rss_kib / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats)))
        return 0
    rows = []
    for variant in args.models:
        row: dict[str, object] = {}
        for suffix, environment in (("", {}), ("_fixed_threshold", FIXED_MMAP_THRESHOLD)):
            output = subprocess.run([sys.executable, "-m", "simulations.benchmarks.sdk_latency", "--one", variant,
                                     "--repeats", str(args.repeats)], capture_output=True, text=True, check=True,
                                    env={**os.environ, **environment})
            measured = json.loads(output.stdout.strip().splitlines()[-1])
            row = row or measured  # bundle size and memory from the default run
            row[f"p50_ms{suffix}"], row[f"p99_ms{suffix}"] = measured["p50_ms"], measured["p99_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| model | p50 ms | p99 ms (target <= 5) | p50 / p99 ms, fixed mmap threshold | bundle MB | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['model']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
              f"{row['p50_ms_fixed_threshold']:.2f} / {row['p99_ms_fixed_threshold']:.2f} | "
              f"{row['bundle_mb']:.1f} | {row['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
