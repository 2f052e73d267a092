"""The on-device SDK: feedback in, recommendations out, personalisation and bundles, all on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.sdk.device import Device, DeviceError
from client.sdk.store import KeySource
from recsys_core.bundle import BundleError, ModelBundle, write_bundle
from recsys_core.federated.state import state_to_arrays
from recsys_core.models import CatalogInfo, build_model
from recsys_core.training import seeded

N_ITEMS = 30
KEY = KeySource.from_app_key(bytes(range(32)))
ITEMS = [f"sku-{i}" for i in range(N_ITEMS)]
POPULARITY = np.arange(N_ITEMS, dtype=np.float64)[::-1].copy()  # sku-0 is the most popular


LIKED = ["sku-5", "sku-11", "sku-17", "sku-23"]


def make_bundle(folder: Path, model_name: str = "neumf", seed: int = 0) -> Path:
    """A global model whose GMF item embeddings put the ``LIKED`` items along one shared direction."""
    options = {"gmf_dim": 4, "mlp_layers": [8, 4]} if model_name == "neumf" else {"hidden_dim": 8, "max_length": 10}
    with seeded(seed):
        model = build_model(model_name, CatalogInfo(3, N_ITEMS), options)
    shared = state_to_arrays(model.shared_state())
    if model_name == "neumf":
        items = np.random.default_rng(seed).normal(0, 0.5, (N_ITEMS, 4)).astype(np.float32)
        items[[ITEMS.index(item) for item in LIKED], 0] += 2.0
        shared["gmf_item_embedding.weight"] = items
    return write_bundle(folder, ModelBundle(model_name, options, N_ITEMS, shared, {"rounds": 1},
                                            {"item_ids": np.array(ITEMS), "item_popularity": POPULARITY}))


@pytest.fixture
def device(tmp_path: Path) -> Device:
    device = Device.open(tmp_path / "user.store", KEY)
    device.load_bundle(make_bundle(tmp_path / "bundle"))
    return device


def test_a_new_user_gets_the_most_popular_items(device: Device) -> None:
    assert [r.item for r in device.recommend(k=3)] == ["sku-0", "sku-1", "sku-2"]


def test_feedback_makes_positives_by_weight_and_seen_items_are_not_recommended(device: Device) -> None:
    device.record("sku-0", "purchase", timestamp=1)
    device.record("sku-1", "view", timestamp=2)  # 0.25: seen, not yet a positive
    device.record("sku-2", "rating", value=5, timestamp=3)
    device.record("sku-3", "rating", value=2, timestamp=4)  # disliked
    device.record("sku-4", "click", timestamp=5)
    device.record("sku-4", "skip", timestamp=6)  # 1 - 1 = 0: no longer a positive
    assert device.positives() == ["sku-0", "sku-2"]
    recommended = {r.item for r in device.recommend(k=N_ITEMS)}
    assert not recommended & {"sku-0", "sku-1", "sku-2", "sku-3"}
    assert "sku-4" in recommended  # its weights cancel out
    assert len(device.recommend(k=N_ITEMS, exclude_seen=False)) == N_ITEMS


def test_bad_feedback_is_refused_with_what_to_do(device: Device) -> None:
    with pytest.raises(ValueError, match="unknown feedback kind 'like'"):
        device.record("sku-0", "like")
    with pytest.raises(ValueError, match="needs a finite value"):
        device.record("sku-0", "rating")
    with pytest.raises(ValueError, match="takes no value"):
        device.record("sku-0", "click", value=3)


def test_candidates_and_filters_limit_the_ranking(device: Device) -> None:
    assert [r.item for r in device.recommend(k=5, candidates=["sku-9", "sku-4", "unknown"])] == ["sku-4", "sku-9"]
    assert all(r.item.endswith("7") for r in device.recommend(k=5, filter=lambda item: item.endswith("7")))


def test_personalisation_fits_the_users_own_parameters_only_and_persists(device: Device, tmp_path: Path) -> None:
    liked = LIKED[:2]
    for step, item in enumerate(liked):
        device.record(item, "purchase", timestamp=step)
    model = device._require_model()
    shared_before = {name: value.clone() for name, value in model.shared_state().items()}
    index = [ITEMS.index(item) for item in LIKED[2:]]  # liked items the user has not told the device about

    def liked_rank() -> float:  # mean number of items ranked above the held-back liked ones
        with torch.no_grad():
            scores = model.score(np.array([0]), device.training_log())[0].numpy()
        return float(np.mean([(scores > scores[i]).sum() for i in index]))

    before = liked_rank()
    assert device.personalise() is not None
    assert liked_rank() < before  # items like the user's own moved up
    assert all(torch.equal(value, model.shared_state()[name]) for name, value in shared_before.items())
    ranking = [r.item for r in device.recommend(k=5)]
    assert set(ranking[:2]) == set(LIKED[2:])
    reopened = Device.open(tmp_path / "user.store", KEY)
    reopened.load_bundle(tmp_path / "bundle")
    assert reopened.positives() == liked and [r.item for r in reopened.recommend(k=5)] == ranking


def test_a_tampered_bundle_is_refused_and_the_previous_one_stays(device: Device, tmp_path: Path) -> None:
    device.record("sku-3", "purchase")
    ranking = device.recommend(k=5)
    broken = make_bundle(tmp_path / "next", seed=1)
    data = bytearray((broken / "parameters.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "parameters.npz").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 does not match"):
        device.load_bundle(broken)
    assert device.recommend(k=5) == ranking


def test_a_sequence_model_recommends_from_the_history(tmp_path: Path) -> None:
    device = Device.open(tmp_path / "user.store", KEY)
    device.load_bundle(make_bundle(tmp_path / "bundle", "sasrec"))
    device.record("sku-8", "purchase", timestamp=1)
    device.record("sku-9", "purchase", timestamp=2)
    assert device.personalise() is None  # nothing private to fit: the history is the input
    recommended = device.recommend(k=3)
    assert len(recommended) == 3 and not {r.item for r in recommended} & {"sku-8", "sku-9"}


def test_recommending_without_a_model_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="call load_bundle"):
        Device.open(tmp_path / "user.store", KEY).recommend()


def test_a_hybrid_model_reads_item_features_from_the_bundle(tmp_path: Path) -> None:
    features = (np.random.default_rng(0).random((N_ITEMS, 6)) < 0.3).astype(np.float32)
    with seeded(0):
        model = build_model("hybrid", CatalogInfo(1, N_ITEMS, features), {})
    bundle = write_bundle(tmp_path / "bundle", ModelBundle(
        "hybrid", {}, N_ITEMS, state_to_arrays(model.shared_state()), {},
        {"item_ids": np.array(ITEMS), "item_features": features,
         "item_feature_names": np.array([f"genre-{i}" for i in range(6)])}))
    device = Device.open(tmp_path / "user.store", KEY)
    device.load_bundle(bundle)
    assert device.training_log().item_features.names[0] == "genre-0"
    device.record("sku-1", "purchase", timestamp=1)
    device.record("sku-2", "purchase", timestamp=2)
    assert device.personalise() is not None  # the hybrid's user embedding is the user's own
    assert len(device.recommend(k=5)) == 5


def test_an_autoencoder_can_rank_in_half_precision_and_shape_changing_overrides_are_refused(tmp_path: Path) -> None:
    options = {"hidden_dims": [16, 8]}
    with seeded(0):
        model = build_model("mult_dae", CatalogInfo(1, N_ITEMS), options)
    bundle = write_bundle(tmp_path / "bundle", ModelBundle(
        "mult_dae", options, N_ITEMS, state_to_arrays(model.shared_state()), {}, {"item_ids": np.array(ITEMS)}))
    rankings = {}
    for dtype in ("float32", "float16"):
        device = Device.open(tmp_path / f"{dtype}.store", KEY, model_overrides={"ranking_dtype": dtype})
        device.load_bundle(bundle)
        for step, item in enumerate(LIKED):
            device.record(item, "purchase", timestamp=step)
        rankings[dtype] = device.recommend(k=N_ITEMS - len(LIKED))
    full, half = rankings["float32"], rankings["float16"]
    assert [r.item for r in full][:5] == [r.item for r in half][:5]
    np.testing.assert_allclose([r.score for r in half], [r.score for r in full], rtol=5e-3, atol=5e-3)
    resized = Device.open(tmp_path / "resized.store", KEY, model_overrides={"hidden_dims": [12, 8]})
    with pytest.raises(BundleError, match="do not fit model mult_dae"):
        resized.load_bundle(bundle)


def test_an_app_that_pins_the_bundle_key_loads_only_signed_bundles(tmp_path: Path) -> None:
    from recsys_core.bundle import read_bundle
    from recsys_core.bundle_signing import generate_signing_key, public_key_text

    operator = generate_signing_key()
    device = Device.open(tmp_path / "user.store", KEY, trusted_bundle_keys=[bytes.fromhex(public_key_text(operator))])
    unsigned = make_bundle(tmp_path / "unsigned")
    with pytest.raises(BundleError, match="refused: it is not signed"):
        device.load_bundle(unsigned)
    signed = write_bundle(tmp_path / "signed", read_bundle(unsigned), operator)
    device.load_bundle(signed)
    assert [r.item for r in device.recommend(k=3)] == ["sku-0", "sku-1", "sku-2"]
