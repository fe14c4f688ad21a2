"""Kept for habit: the README has no generated sections any more; the generated pages (results
tables, registry, config reference, figures) are in the documentation site.

    PYTHONPATH=src python tools/update_readme.py [--check]    # same as tools/gen_docs.py
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parent / "gen_docs.py"), run_name="__main__")
