"""``python -m benchmarks SUITE``: run a named suite of benchmarks/suites.yaml (see runner.py)."""

import sys

from benchmarks.runner import main

sys.exit(main())
