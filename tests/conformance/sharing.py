"""Sharing thresholds lowered for tests: a threaded run then cuts even a test's small arrays
into shares among its threads, so every split path of the reference evaluator's kernels
(products by batch, rows or columns; softmax and norms by first-axis slices; blockwise chains)
runs on the shapes those tests use. Only the size limits change, never what a share computes.
"""

from __future__ import annotations

from typing import Any, Callable

#: (module, name) -> lowered value
LOWERED: dict[tuple[str, str], int] = {
    ("ops_nn", "SPLIT_PRODUCT"): 1,  # multiply-adds: every product
    ("ops_nn", "_SHARE_MINIMUM"): 1,  # rows or columns per share
    ("ops_nn", "_SPLIT_SIZE"): 2,  # elements of a softmax / norm input
    ("ops_elementwise", "BLOCK"): 2,  # elements per block of a fused chain
}


def share_everything(set_attribute: Callable[[Any, str, Any], None]) -> None:
    """Lower every sharing threshold through ``set_attribute`` (``setattr``, or a pytest
    ``monkeypatch.setattr`` to have them put back)."""
    from mil_sparsity.reference import ops_elementwise, ops_nn

    modules = {"ops_nn": ops_nn, "ops_elementwise": ops_elementwise}
    for (module, name), value in LOWERED.items():
        if not hasattr(modules[module], name):
            raise AttributeError(f"mil_sparsity.reference.{module} has no {name} any more: update {__name__}")
        set_attribute(modules[module], name, value)


def count_shares(set_attribute: Callable[[Any, str, Any], None], on_share: Callable[[], None]) -> None:
    """Call ``on_share()`` for every share a threaded kernel hands to the evaluator's pool (the
    shares it runs on the calling thread are not counted), through ``set_attribute``."""
    from mil_sparsity.reference import threads

    real = threads._executor

    class Counting:
        def __init__(self, size: int) -> None:
            self.pool = real(size)

        def submit(self, *args: Any) -> Any:
            on_share()
            return self.pool.submit(*args)

    set_attribute(threads, "_executor", Counting)
