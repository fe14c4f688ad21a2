"""bioprop's benchmarks: scripts that write JSON lines to ``benchmarks/results/``, and the runner
of the named suites declared in ``benchmarks/suites.yaml`` (``python -m benchmarks SUITE``; see
``benchmarks/runner.py`` and docs/guides/benchmarks.md). Each script also runs on its own:
``python benchmarks/ide_speed.py --help``."""
