"""``python -m mil_sparsity.cli``: the ``mil-sparsity`` command."""

from mil_sparsity.cli import main

raise SystemExit(main())
