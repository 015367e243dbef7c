"""What is on disk: the sparse format (:mod:`~mil_sparsity.format.sparse_format`), weight
files (:mod:`~mil_sparsity.format.blob`), packages as untrusted input
(:mod:`~mil_sparsity.format.package_guard`) and atomic output (:mod:`~mil_sparsity.format.atomic`)."""
