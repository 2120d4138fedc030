"""κ(t) schedulers against the reference values of docs/algorithm.md#schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from envs.common.errors import ConfigError
from worldmodel.objective.schedules import SCHEDULERS, get_scheduler, inverse_kappa


@pytest.mark.parametrize("t, kappa", [(0.1, 0.039), (0.25, 0.149), (0.5, 0.5), (0.75, 0.851), (0.9, 0.961)])
def test_sigmoid_reference_values(t, kappa):
    assert get_scheduler("sigmoid").kappa(torch.tensor(t)).item() == pytest.approx(kappa, abs=5e-4)


def test_sigmoid_endpoints_and_derivative():
    s = get_scheduler("sigmoid")
    assert s.kappa(torch.tensor(0.0)).item() == pytest.approx(1e-5)       # clamped, never exactly 0
    assert s.kappa(torch.tensor(1.0)).item() == pytest.approx(1.0, abs=1e-7)
    assert s.kappa_derivative(torch.tensor(0.0)).item() == pytest.approx(0.30, abs=5e-3)
    assert s.kappa_derivative(torch.tensor(0.5)).item() == pytest.approx(1.66, abs=5e-3)


@pytest.mark.parametrize("t", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_cosine_and_linear_closed_forms(t):
    assert get_scheduler("cosine").kappa(torch.tensor(t)).item() == pytest.approx(1 - math.cos(math.pi * t / 2),
                                                                                 abs=1e-6)
    assert get_scheduler("linear").kappa(torch.tensor(t)).item() == pytest.approx(t)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_derivative_matches_finite_difference_and_kappa_increases(name):
    s = get_scheduler(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-5
    numeric = (s.kappa(t + h) - s.kappa(t - h)) / (2 * h)
    torch.testing.assert_close(s.kappa_derivative(t), numeric, rtol=1e-4, atol=1e-6)
    k = s.kappa(torch.linspace(0, 1, 101))
    assert (k[1:] >= k[:-1]).all() and k[0] <= 1e-5 + 1e-9 and k[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_inverse_kappa_round_trip(name):
    s = get_scheduler(name)
    keep = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9])
    torch.testing.assert_close(s.kappa(inverse_kappa(s, keep)), keep, atol=1e-5, rtol=0)


def test_unknown_scheduler_is_a_config_error():
    with pytest.raises(ConfigError, match="sigmoid"):
        get_scheduler("cubic")
