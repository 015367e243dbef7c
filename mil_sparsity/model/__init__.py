"""The model as mil_sparsity sees it: its weights (:mod:`~mil_sparsity.model.inventory`)."""
