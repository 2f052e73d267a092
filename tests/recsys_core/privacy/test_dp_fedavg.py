"""DP-FedAvg maths: joint clipping, noise of the declared variance, distributed shares, user-level epsilon."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_core.privacy.user_level import (
    central_noise,
    clip_update,
    distributed_noise_share,
    distributed_noise_std,
    noisy_mean_update,
    privatize_update,
    user_level_epsilon,
)

SIGMA, CLIP = 1.3, 0.7
SAMPLES = 100_000


def joint_norm(update: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for a in update.values()))


def assert_variance(samples: np.ndarray, variance: float) -> None:
    """Two-sided chi-square test at level ~1e-3 that the samples (known mean 0) have ``variance``.

    The statistic has ``n`` degrees of freedom; at n = 1e5 its normal approximation
    N(n, 2n) is exact to well within the 3.29-sigma band (about +-1.5% of the variance).
    """
    statistic = float(np.sum(samples.astype(np.float64) ** 2)) / variance
    half_width = 3.29 * math.sqrt(2 * samples.size)
    low, high = samples.size - half_width, samples.size + half_width
    assert low <= statistic <= high, f"sample variance {statistic * variance / samples.size} vs declared {variance}"


def random_update(generator: np.random.Generator, scale: float) -> dict[str, np.ndarray]:
    return {
        "item_embedding.weight": (generator.normal(size=(50, 8)) * scale).astype(np.float32),
        "mlp.0.weight": (generator.normal(size=(16, 16)) * scale).astype(np.float32),
        "mlp.0.bias": (generator.normal(size=16) * scale).astype(np.float32),
    }


def test_clipped_update_norm_is_at_most_the_clip_norm_over_all_arrays_jointly():
    generator = np.random.default_rng(0)
    for trial in range(200):
        update = random_update(generator, scale=generator.uniform(0.1, 10.0))
        clip_norm = float(generator.uniform(0.01, 3.0))
        clipped, original_norm = clip_update(update, clip_norm)
        assert original_norm == pytest.approx(joint_norm(update))
        assert joint_norm(clipped) <= clip_norm, f"trial {trial}"
        assert {name: array.dtype for name, array in clipped.items()} == {n: a.dtype for n, a in update.items()}
        if original_norm > clip_norm:
            # Scaled, not truncated per coordinate: the direction of the update is kept.
            scale = joint_norm(clipped) / original_norm
            for name in update:
                np.testing.assert_allclose(clipped[name], update[name] * scale, rtol=1e-5, atol=1e-7)


def test_update_below_the_clip_norm_is_unchanged():
    update = random_update(np.random.default_rng(1), scale=0.01)
    norm = joint_norm(update)
    clipped, original_norm = clip_update(update, clip_norm=norm * 1.5)
    assert original_norm == pytest.approx(norm)
    for name in update:
        np.testing.assert_array_equal(clipped[name], update[name])
        assert clipped[name] is not update[name]


@pytest.mark.parametrize("noise_std", [None, 0.1])
def test_a_scalar_array_stays_an_array_after_clipping_and_noise(noise_std: float | None):
    # A 0-d float buffer (Mult-VAE's annealing step) in an update that clipping scales: numpy arithmetic on
    # 0-d arrays returns scalars, which Flower's Array refuses (every Mult-VAE device failed under DP).
    update = {"step": np.array(3.0, dtype=np.float32), "weights": np.full(4, 10.0, dtype=np.float32)}
    sent = privatize_update(update, CLIP, noise_std, np.random.default_rng(0))
    for name, value in update.items():
        assert isinstance(sent[name], np.ndarray) and sent[name].shape == value.shape, name
        assert sent[name].dtype == value.dtype, name
    assert joint_norm(sent) <= CLIP * 1.000001 or noise_std is not None


def test_clipping_is_joint_not_per_array():
    # Each array has norm 0.8 <= 1, but together sqrt(2) * 0.8 > 1: the update must be clipped.
    update = {"a": np.array([0.8, 0.0]), "b": np.array([0.0, 0.8])}
    clipped, original_norm = clip_update(update, clip_norm=1.0)
    assert original_norm == pytest.approx(0.8 * math.sqrt(2))
    assert joint_norm(clipped) == pytest.approx(1.0)


def test_an_update_with_nan_cannot_slip_through_unclipped():
    with pytest.raises(ValueError, match="'b'"):
        clip_update({"a": np.ones(3), "b": np.array([1.0, np.nan])}, clip_norm=1.0)


def test_central_noise_has_the_declared_variance():
    noise = central_noise((SAMPLES,), SIGMA, CLIP, np.random.default_rng(2024))
    assert abs(float(noise.mean())) < 5 * SIGMA * CLIP / math.sqrt(SAMPLES)
    assert_variance(noise, (SIGMA * CLIP) ** 2)


@pytest.mark.parametrize("survivors", [5, 8])
def test_distributed_shares_sum_to_at_least_the_full_variance(survivors):
    min_surviving_devices = 5
    generator = np.random.default_rng(7 + survivors)
    total = sum(distributed_noise_share((SAMPLES,), SIGMA, CLIP, min_surviving_devices, generator)
                for _ in range(survivors))
    full_variance = (SIGMA * CLIP) ** 2
    # Exactly the full variance when the minimum survives, proportionally more with more survivors.
    declared = survivors / min_surviving_devices * full_variance
    assert survivors * distributed_noise_std(SIGMA, CLIP, min_surviving_devices) ** 2 == pytest.approx(declared)
    assert declared >= full_variance
    assert_variance(total, declared)


def test_the_noise_the_server_adds_to_the_mean_has_the_declared_variance():
    # Zero updates isolate the noise: mean = noise / expected_devices, so its variance is (sigma C / n)^2.
    expected_devices = 4
    zeros = [{"w": np.zeros(SAMPLES, dtype=np.float32)} for _ in range(3)]
    mean = noisy_mean_update(zeros, expected_devices=expected_devices, clip_norm=CLIP,
                             central_noise_multiplier=SIGMA, generator=np.random.default_rng(11))
    assert_variance(mean["w"], (SIGMA * CLIP / expected_devices) ** 2)


def test_server_clips_again_under_central_noise_and_divides_by_the_planned_count():
    generator = np.random.default_rng(3)
    honest = {"w": np.array([0.3, 0.4])}  # norm 0.5, below C = 1
    hostile = {"w": np.array([30.0, 40.0])}  # did not clip: norm 50
    mean = noisy_mean_update([honest, hostile], expected_devices=10, clip_norm=1.0,
                             central_noise_multiplier=1e-9, generator=generator)
    np.testing.assert_allclose(mean["w"], (np.array([0.3, 0.4]) + np.array([0.6, 0.8])) / 10, atol=1e-6)
    # Distributed noise: the updates already carry the noise and are summed as sent.
    summed = noisy_mean_update([honest, honest], expected_devices=4, clip_norm=1.0,
                               central_noise_multiplier=None, generator=generator)
    np.testing.assert_allclose(summed["w"], np.array([0.3, 0.4]) / 2)


def test_device_share_is_clipped_first_then_noised_with_the_given_std():
    update = {"w": np.full(SAMPLES, 1.0, dtype=np.float32)}
    std = distributed_noise_std(SIGMA, CLIP, 4)
    sent = privatize_update(update, CLIP, std, np.random.default_rng(5))
    assert sent["w"].dtype == np.float32
    clipped_value = CLIP / math.sqrt(SAMPLES)
    assert_variance(sent["w"] - clipped_value, std**2)
    assert joint_norm(privatize_update(update, CLIP, None, np.random.default_rng(5))) <= CLIP


def test_epsilon_with_amplification_is_below_without_and_the_claim_is_conservative():
    common = {"noise_multiplier": 1.0, "rounds": 100, "devices_per_round": 10, "num_devices": 1000, "delta": 1e-5}
    fixed_size = user_level_epsilon(**common)
    assert fixed_size.with_amplification < fixed_size.without_amplification
    # Flower samples a fixed-size set and the server knows who took part: amplification is not claimed.
    assert fixed_size.claimed == "without_amplification"
    assert fixed_size.claimed_epsilon == fixed_size.without_amplification
    assert "Poisson" in fixed_size.sampling_assumption and "without replacement" in fixed_size.sampling_assumption
    assert fixed_size.sampling_rate == pytest.approx(0.01)

    poisson = user_level_epsilon(**common, sampling="poisson", participation_hidden=True)
    assert poisson.claimed == "with_amplification"
    assert poisson.claimed_epsilon == poisson.with_amplification == fixed_size.with_amplification

    # Poisson sampling alone is not enough: a party that sees who took part gets no amplification.
    visible = user_level_epsilon(**common, sampling="poisson", participation_hidden=False)
    assert visible.claimed == "without_amplification"


def test_unamplified_epsilon_counts_the_most_rounds_any_user_joined():
    common = {"noise_multiplier": 2.0, "rounds": 100, "devices_per_round": 50, "num_devices": 100, "delta": 1e-5}
    unknown = user_level_epsilon(**common)
    joined_twelve = user_level_epsilon(**common, max_rounds_joined=12)
    assert unknown.max_rounds_joined == 100
    assert joined_twelve.without_amplification < unknown.without_amplification
    # When few rounds were joined, the unamplified bound can be the smaller valid one; then it is claimed.
    hidden = user_level_epsilon(**common, max_rounds_joined=3, sampling="poisson", participation_hidden=True)
    assert hidden.without_amplification < hidden.with_amplification
    assert hidden.claimed == "without_amplification"
    with pytest.raises(ValueError, match="max_rounds_joined"):
        user_level_epsilon(**common, max_rounds_joined=101)
