"""Streaming post-hoc compression of a saved .mlpackage, one weight in memory at a time:
:mod:`~mil_sparsity.streaming.rewrite` (the package rewriter) and
:mod:`~mil_sparsity.streaming.chunked` (weights above ``chunked_above_bytes``, chunk by chunk)."""

from mil_sparsity.streaming.chunked import CHUNKED_ABOVE_BYTES
from mil_sparsity.streaming.rewrite import StreamSource, compress_package, open_source, package_targets, run_plan

__all__ = ["CHUNKED_ABOVE_BYTES", "StreamSource", "compress_package", "open_source", "package_targets", "run_plan"]
