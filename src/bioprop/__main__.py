"""``python -m bioprop`` (and ``torchrun --nproc_per_node=N -m bioprop train ...``): the CLI."""

from .cli import main

raise SystemExit(main())
