"""Bad input raises a clear error and leaves the input state unchanged."""

from __future__ import annotations

import pytest
import torch

from cmanp_bo.nn import CMANPConfig, ContextState
from tests.helpers import small_net

# the plain network, and one with every memory (whose statistics are part of the state too)
MEMORIES = {
    "plain": {},
    "memories": dict(
        regression_features=6, polynomial_memory=True, hypothesis_count=2, hypothesis_features=4
    ),
}


@pytest.fixture(params=list(MEMORIES))
def net(request):
    return small_net(2, joint_head=False, dtype=torch.float64, **MEMORIES[request.param])


@pytest.fixture
def state(net):
    return net.encode(
        torch.rand(3, 10, 2, dtype=torch.float64), torch.rand(3, 10, 1, dtype=torch.float64)
    )


def snapshot(state: ContextState) -> list[torch.Tensor]:
    return [t.clone() for t in state.tensors()]


X = lambda *s: torch.rand(*s, dtype=torch.float64)  # noqa: E731


@pytest.mark.parametrize(
    "x, y, error, match",
    [
        (
            X(3, 2, 2).index_fill(1, torch.tensor([0]), float("nan")),
            X(3, 2, 1),
            ValueError,
            "NaN or inf",
        ),
        (
            X(3, 2, 2),
            X(3, 2, 1).index_fill(1, torch.tensor([1]), float("inf")),
            ValueError,
            "NaN or inf",
        ),
        (X(3, 2, 3), X(3, 2, 1), ValueError, "dim_x=2"),
        (X(3, 2, 2), X(3, 2, 2), ValueError, "dim_y=1"),
        (X(3, 2, 2), X(3, 3, 1), ValueError, "x holds 2 points but y holds 3"),
        (X(4, 2, 2), X(4, 2, 1), ValueError, "batch shapes do not match"),
        (X(3, 0, 2), X(3, 0, 1), ValueError, "empty"),
        (X(2), X(2), ValueError, "shape"),
        (X(3, 2, 2).float(), X(3, 2, 1), TypeError, "dtype"),
        (X(3, 2, 2).long(), X(3, 2, 1), TypeError, "floating-point"),
        ([[0.1, 0.2]], X(3, 1, 1), TypeError, "torch.Tensor"),
    ],
)
def test_bad_update_raises_and_leaves_state(net, state, x, y, error, match):
    before = snapshot(state)
    with pytest.raises(error, match=match):
        net.update(state, x, y)
    assert state.num_points == 10
    assert all(torch.equal(a, b) for a, b in zip(before, state.tensors()))


def test_bad_encode_and_predict(net, state):
    with pytest.raises(ValueError, match="NaN or inf"):
        net.encode(torch.full((1, 3, 2), float("nan"), dtype=torch.float64), X(1, 3, 1))
    with pytest.raises(ValueError, match="block_size"):
        net.encode(X(1, 3, 2), X(1, 3, 1), block_size=0)
    with pytest.raises(ValueError, match="dim_x=2"):
        net.predict(state, X(3, 4, 1))
    with pytest.raises(ValueError, match="NaN or inf"):
        net.predict(state, torch.full((3, 4, 2), float("inf"), dtype=torch.float64))
    with pytest.raises(TypeError, match="ContextState"):
        net.predict((1, 2), X(3, 4, 2))
    with pytest.raises(RuntimeError, match="no joint head"):
        net.joint_moments(state, X(3, 4, 2))


def test_state_from_other_dtype_is_rejected(net, state):
    with pytest.raises(TypeError, match="dtype"):
        net.float().predict(state, torch.rand(3, 4, 2))


def test_update_returns_new_state(net, state):
    before = snapshot(state)
    new = net.update(state, X(3, 2, 2), X(3, 2, 1))
    assert new is not state and new.num_points == 12 and state.num_points == 10
    assert all(torch.equal(a, b) for a, b in zip(before, state.tensors()))
    with pytest.raises(AttributeError):
        state.num_points = 3  # frozen


@pytest.mark.parametrize(
    "bad",
    [
        dict(d_model=30, num_heads=4),
        dict(num_layers=0),
        dict(joint_head=True, dim_y=2),
        dict(min_std=0.0),
    ],
)
def test_bad_config(bad):
    with pytest.raises(ValueError):
        CMANPConfig(**bad)
