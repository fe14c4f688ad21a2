"""The worked examples of docs/guides/contracts.md run as written (in one namespace, in order)."""

import re
from pathlib import Path

import pytest

from bioprop import MODELS

DOC = Path(__file__).resolve().parent.parent / "docs" / "guides" / "contracts.md"


@pytest.mark.filterwarnings("ignore:.*exact weight transport")
def test_contracts_guide_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 3
    ns: dict = {}
    try:
        for code in blocks:
            exec(compile(code, str(DOC), "exec"), ns)
    finally:  # the examples register models: leave the registry as it was
        for name in ("two_layer_example", "two_pop_example"):
            MODELS._entries.pop(name, None)
            MODELS._returns.pop(name, None)
