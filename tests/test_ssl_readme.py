"""The README example of tapct-ssl really runs (it builds its backbone with tapct_vit3d)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "packages" / "tapct-ssl" / "README.md"


def test_readme_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tapct_vit3d")
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None
    exec(compile(code.group(1), str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "'loss'" in printed and "nan" not in printed
