"""Who reads each var of an ML Program spec, and as what: the streaming rewriter's counterpart
of ``_graph.consumers``, on the protobuf spec instead of a PyMIL program.

For every op input bound to a var name it records a :class:`~mil_sparsity.model.inventory.Consumer`
with the input names and, for each, its product role (:func:`mil_sparsity.model.products.product_role`).
The flags the role needs are read from the op's arguments as the spec stores them: an inline
value, or a reference to a const op (``transpose_x``, ``transpose_y``: bools; ``groups``: an
int). The other matmul operand's rank comes from its declared type; it counts as constant when it
is an inline value or the output of a const or ``constexpr_*`` op (as in PyMIL).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Union

from mil_sparsity.model.products import NotAProduct, ProductRole, product_role
from mil_sparsity.model.inventory import Consumer, is_constexpr


def op_name(op: Any) -> str:
    """A proto op's ``name`` attribute, else its first output's name."""
    name = op.attributes.get("name") if "name" in op.attributes else None
    if name is not None and name.immediateValue.tensor.strings.values:
        return str(name.immediateValue.tensor.strings.values[0])
    return str(op.outputs[0].name) if op.outputs else ""


def _rank(value_type: Any) -> Optional[int]:
    return int(value_type.tensorType.rank) if value_type.WhichOneof("type") == "tensorType" else None


class _Vars:
    """Rank and producing op of every var of one function (inputs, op outputs, block inputs)."""

    def __init__(self, function: Any, blocks: Iterable[Any]) -> None:
        self.ranks: dict[str, Optional[int]] = {item.name: _rank(item.type) for item in function.inputs}
        self.producers: dict[str, Any] = {}
        for block in blocks:
            for item in block.inputs:
                self.ranks[item.name] = _rank(item.type)
            for op in block.operations:
                for output in op.outputs:
                    self.ranks[output.name] = _rank(output.type)
                    self.producers[output.name] = op

    def is_constant(self, binding: Any) -> bool:
        if binding.WhichOneof("binding") == "value":
            return True
        producer = self.producers.get(binding.name)
        return producer is not None and (producer.type == "const" or is_constexpr(producer.type))

    def scalar(self, op: Any, name: str) -> Any:
        """The value of ``op``'s argument ``name``: inline, or a const op's; None otherwise."""
        if name not in op.inputs or not op.inputs[name].arguments:
            return None
        binding = op.inputs[name].arguments[0]
        if binding.WhichOneof("binding") == "value":
            value = binding.value
        else:
            producer = self.producers.get(binding.name)
            if producer is None or producer.type != "const" or "val" not in producer.attributes:
                return None
            value = producer.attributes["val"]
        if value.WhichOneof("value") != "immediateValue":
            return None
        tensor = value.immediateValue.tensor
        kind = tensor.WhichOneof("value")
        if kind is None or not len(getattr(tensor, kind).values):
            return None
        return getattr(tensor, kind).values[0]

    def role(self, op: Any, param: str, var_name: str) -> Union[ProductRole, NotAProduct, None]:
        rank = self.ranks.get(var_name)
        if rank is None:
            return None
        other_rank: Optional[int] = None
        other_is_const = False
        if op.type == "matmul":
            other_name = "y" if param == "x" else "x"
            if other_name in op.inputs and op.inputs[other_name].arguments:
                binding = op.inputs[other_name].arguments[0]
                other_is_const = self.is_constant(binding)
                if binding.WhichOneof("binding") == "name":
                    other_rank = self.ranks.get(binding.name)
                else:
                    other_rank = _rank(binding.value.type)
        groups = self.scalar(op, "groups")
        return product_role(
            str(op.type),
            param,
            rank,
            transpose_x=bool(self.scalar(op, "transpose_x")),
            transpose_y=bool(self.scalar(op, "transpose_y")),
            other_rank=other_rank,
            other_is_const=other_is_const,
            groups=1 if groups is None else int(groups),
        )


def readers(function: Any, blocks: list[Any]) -> dict[str, list[Consumer]]:
    """Var name -> every op of ``blocks`` reading it (once per op), with input names and roles."""
    variables = _Vars(function, blocks)
    result: dict[str, list[Consumer]] = {}
    for block in blocks:
        for op in block.operations:
            names: dict[str, list[str]] = {}
            for input_name, argument in op.inputs.items():
                for binding in argument.arguments:
                    if binding.WhichOneof("binding") == "name":
                        names.setdefault(binding.name, []).append(input_name)
            for var_name, input_names in names.items():
                roles = tuple(variables.role(op, input_name, var_name) for input_name in input_names)
                result.setdefault(var_name, []).append(
                    Consumer(op_name(op), str(op.type), tuple(input_names), roles)
                )
    return result
