"""The package stands alone: torch + attrs only, and it imports nothing CT or ViT."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import tapct_ssl

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def test_runtime_dependencies_are_torch_and_attrs() -> None:
    project = tomllib.loads((PACKAGE_ROOT / "pyproject.toml").read_text())["project"]
    names = {
        re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]
    }
    assert names == {"torch", "attrs"}


def test_import_pulls_no_ct_or_model_stack() -> None:
    forbidden = [
        "tapct_vit3d",
        "tapct_data",
        "tapct_eval",
        "tapct_app",
        "torchio",
        "monai",
        "nibabel",
        "SimpleITK",
        "pydicom",
        "zarr",
        "sklearn",
        "timm",
        "lightly",
        "einops",
    ]  # fmt: skip (numpy not listed: torch itself imports it when installed)
    code = f"import sys, tapct_ssl; print([m for m in {forbidden!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_public_api_is_documented() -> None:
    for name in tapct_ssl.__all__:
        obj = getattr(tapct_ssl, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__) > 40, name
