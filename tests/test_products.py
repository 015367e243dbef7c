"""The product-role table (mil_sparsity.model.products) against numpy's own contraction axes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mil_sparsity.model.products import NotAProduct, ProductRole, product_role


def _matmul(x, y, tx, ty):
    if tx:
        x = np.swapaxes(x, -1, -2) if x.ndim > 1 else x
    if ty:
        y = np.swapaxes(y, -1, -2) if y.ndim > 1 else y
    return np.matmul(x, y)


@pytest.mark.parametrize("const_param", ["x", "y"])
@pytest.mark.parametrize("tx,ty", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("weight_rank,other_rank", [(2, 2), (2, 3), (3, 3), (2, 1)])
def test_matmul_axes_are_the_contracted_ones(const_param, tx, ty, weight_rank, other_rank):
    """Zeroing index j of the activation's channel axis and index j of the weight's reduction
    axis removes exactly the same terms of the product: checked by linearity."""
    rng = np.random.default_rng(0)
    k, m, n = 5, 3, 4
    role = product_role(
        "matmul", const_param, weight_rank, transpose_x=tx, transpose_y=ty, other_rank=other_rank
    )
    assert isinstance(role, ProductRole)

    def operand(rank, core):
        return (k,) if rank == 1 else (2,) * (rank - 2) + core

    # x: [..., m, k] ([..., k, m] when transposed); y: [..., k, n] ([..., n, k] when transposed).
    x_rank, y_rank = (weight_rank, other_rank) if const_param == "x" else (other_rank, weight_rank)
    x = rng.standard_normal(operand(x_rank, (k, m) if tx else (m, k)))
    y = rng.standard_normal(operand(y_rank, (n, k) if ty else (k, n)))
    weight, activation = (x, y) if const_param == "x" else (y, x)
    j = 2
    w_cut = weight.copy()
    np.moveaxis(w_cut, role.weight_axis, 0)[j] = 0
    a_cut = activation.copy()
    np.moveaxis(a_cut, role.activation_axis, 0)[j] = 0
    args_w = (w_cut, activation) if const_param == "x" else (activation, w_cut)
    args_a = (weight, a_cut) if const_param == "x" else (a_cut, weight)
    np.testing.assert_allclose(_matmul(*args_w, tx, ty), _matmul(*args_a, tx, ty), atol=1e-12)
    if weight_rank > 1:
        assert role.output_axis is not None and role.output_axis != role.weight_axis
    else:
        assert role.output_axis is None


def test_linear_and_conv_roles():
    assert product_role("linear", "weight", 2) == ProductRole("linear", "weight", "x", -1, 1, 0)
    conv = product_role("conv", "weight", 4, groups=2)
    assert isinstance(conv, ProductRole)
    assert (conv.activation_axis, conv.weight_axis, conv.output_axis, conv.groups) == (1, 1, 0, 2)
    convt = product_role("conv_transpose", "weight", 4)
    assert isinstance(convt, ProductRole) and (convt.weight_axis, convt.output_axis) == (0, 1)


@pytest.mark.parametrize(
    "op,param,kwargs",
    [("linear", "bias", {}), ("conv", "bias", {}), ("add", "y", {}), ("matmul", "x", {"other_is_const": True})],
)
def test_not_a_product_has_a_reason(op, param, kwargs):
    result = product_role(op, param, 2, **kwargs)
    assert isinstance(result, NotAProduct) and op in result.reason
