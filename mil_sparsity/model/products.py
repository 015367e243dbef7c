"""Which axis of a weight is summed against which axis of an activation, per consuming op.

One table for the facts that calibration (which activation channel to measure) and pruning
(the reduction axis for ``dim=None`` and for activation scores; the output rows Wanda compares
within) both need. Graph-independent: callers pass the op type, the parameter the const fills,
its rank, the other operand's rank and the op's flags.

========================  ==========  ===============  ==============  ===========
op (const as)             activation  activation axis  weight axis     output axis
========================  ==========  ===============  ==============  ===========
linear (weight [O, I])    x           -1               1               0
conv (weight [O, I/g,.])  x           1 (C_in)         1               0
conv_transpose ([I,O/g,.]) x          1 (C_in)         0               1
matmul (y const)          x           -1 / -2 (tx)     -2 / -1 (ty)    the other of the last 2
matmul (x const)          y           -2 / -1 (ty)     -1 / -2 (tx)    the other of the last 2
========================  ==========  ===============  ==============  ===========

Weight axes (``weight_axis``, ``output_axis``) are non-negative. The activation axis is valid for
any rank the activation takes between calls (flexible shapes): counted from the end for linear
and matmul, 1 (the channel axis of [N, C, ...]) for conv and conv_transpose. A rank-1
matmul operand is its own contracted axis (0) and has no output axis (None).
"""

from __future__ import annotations

from typing import Optional, Union

import attrs

#: op type -> the inputs through which it multiplies a weight with an activation
WEIGHT_OPERANDS: dict[str, tuple[str, ...]] = {
    "linear": ("weight",),
    "conv": ("weight",),
    "conv_transpose": ("weight",),
    "matmul": ("x", "y"),
}
PRODUCT_OPS = tuple(WEIGHT_OPERANDS)


@attrs.frozen
class ProductRole:
    """How one op reads one const weight as a factor of a product with an activation."""

    op_type: str
    weight_param: str
    activation_param: str
    activation_axis: int
    weight_axis: int
    output_axis: Optional[int]
    groups: int = 1

    @property
    def description(self) -> str:
        return (
            f"{self.op_type}.{self.weight_param} (reduction axis {self.weight_axis}, activation "
            f"{self.activation_param} axis {self.activation_axis})"
        )


@attrs.frozen
class NotAProduct:
    """Why a const read by an op has no product role (lands in the report as a skip reason)."""

    reason: str


def product_role(
    op_type: str,
    param: str,
    weight_rank: int,
    *,
    transpose_x: bool = False,
    transpose_y: bool = False,
    other_rank: Optional[int] = None,
    other_is_const: bool = False,
    groups: int = 1,
) -> Union[ProductRole, NotAProduct]:
    """The product role of a const of rank ``weight_rank`` fed to ``op_type``'s ``param``."""
    if op_type == "linear":
        if param != "weight":
            return NotAProduct(f"linear.{param} is not the weight operand")
        return ProductRole("linear", "weight", "x", -1, 1, 0)
    if op_type in ("conv", "conv_transpose"):
        if param != "weight":
            return NotAProduct(f"{op_type}.{param} is not the weight operand")
        if op_type == "conv":
            return ProductRole("conv", "weight", "x", 1, 1, 0, groups)
        return ProductRole("conv_transpose", "weight", "x", 1, 0, 1, groups)
    if op_type == "matmul":
        return _matmul_role(param, weight_rank, transpose_x, transpose_y, other_rank, other_is_const)
    return NotAProduct(f"{op_type} is not a linear, conv, conv_transpose or matmul")


def _matmul_role(
    param: str,
    weight_rank: int,
    transpose_x: bool,
    transpose_y: bool,
    other_rank: Optional[int],
    other_is_const: bool,
) -> Union[ProductRole, NotAProduct]:
    if param not in ("x", "y"):
        return NotAProduct(f"matmul.{param} is not an operand")
    if other_is_const:
        return NotAProduct("matmul of two consts has no activation")
    if param == "y":
        weight_axis, output_axis = _operand_axes(weight_rank, contracted_last=transpose_y)
        activation_axis = -2 if transpose_x and (other_rank or 2) > 1 else -1
        return ProductRole("matmul", "y", "x", activation_axis, weight_axis, output_axis)
    weight_axis, output_axis = _operand_axes(weight_rank, contracted_last=not transpose_x)
    if other_rank == 1:
        activation_axis = -1
    else:
        activation_axis = -1 if transpose_y else -2
    return ProductRole("matmul", "x", "y", activation_axis, weight_axis, output_axis)


def _operand_axes(rank: int, *, contracted_last: bool) -> tuple[int, Optional[int]]:
    """(contracted axis, output axis) of a matmul operand, both non-negative."""
    if rank == 1:
        return 0, None
    last, second_last = rank - 1, rank - 2
    return (last, second_last) if contracted_last else (second_last, last)
