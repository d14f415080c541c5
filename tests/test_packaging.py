"""Every package declares what it imports, and a package's tests import no other package.

A static check over the sources (every ``import``, also those inside functions), so a
missing declaration is caught in the workspace too, where everything is installed;
``.ci/package-tests`` proves the same by installing each package alone and running its
tests there.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ["tapct-vit3d", "tapct-ssl", "tapct-data", "tapct-eval"]
OURS = {"tapct_vit3d", "tapct_ssl", "tapct_data", "tapct_eval", "tapct_app"}
# Declared, needed at run time, but never imported by name.
INDIRECT = {
    "pylibjpeg": "pydicom's JPEG decoders, plugins it finds itself",
    "pylibjpeg-openjpeg": "pydicom's JPEG 2000 decoder",
    "pylibjpeg-libjpeg": "pydicom's JPEG decoder",
    "numpy": "tapct-vit3d: safetensors.torch.save_file converts through numpy",
    "nibabel": "tapct-eval: MONAI's LoadImage reads NIfTI with it",
    "pydicom": "tapct-eval: MONAI's PydicomReader reads DICOM series with it",
    "pynrrd": "tapct-eval: MONAI's NrrdReader reads NRRD with it",
    "pandas": "tapct-eval: torchsurv imports it without declaring it",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {_norm(re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0]) for r in requirements}


def _imports(folder: Path) -> dict[str, set[str]]:
    """Top-level modules imported anywhere under ``folder`` -> the files importing them."""
    found: dict[str, set[str]] = {}
    local = {p.stem for p in folder.rglob("*.py")}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local | {"__future__"}:
                    found.setdefault(top, set()).add(path.name)
    return found


@functools.cache
def _installed() -> dict[str, list[str]]:
    return dict(packages_distributions())


def _distribution(module: str) -> str:
    if module in OURS:
        return "tapct" if module == "tapct_app" else module.replace("_", "-")
    dists = _installed().get(module)
    assert dists, f"{module}: imported but not installed in the workspace"
    return _norm(dists[0])


def _project(folder: str) -> dict:
    return tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("folder", [f"packages/{p}" for p in LIBRARIES] + ["apps/tapct"])
def test_every_import_is_declared(folder):
    project = _project(folder)
    declared = _requirement_names(project["dependencies"]) | {_norm(project["name"])}
    # A lazily imported adapter's library is declared as an extra (tapct-eval[timm]).
    extras = {
        name
        for extra, reqs in project.get("optional-dependencies", {}).items()
        if extra != "test"
        for name in _requirement_names(reqs)
    }
    used = {_distribution(m): files for m, files in _imports(ROOT / folder / "src").items()}
    missing = {d: sorted(f) for d, f in used.items() if d not in declared | extras}
    assert not missing, f"{folder}: imported but declared in no dependency or extra: {missing}"
    unused = declared - set(used) - {_norm(project["name"])} - set(INDIRECT)
    assert not unused, f"{folder}: declared but never imported: {sorted(unused)}"


@pytest.mark.parametrize("package", LIBRARIES)
def test_package_tests_need_only_the_package_and_its_test_extra(package):
    project = _project(f"packages/{package}")
    test_extra = project["optional-dependencies"]["test"]
    declared = _requirement_names(project["dependencies"] + test_extra)
    declared.add(_norm(project["name"]))
    used = _imports(ROOT / "packages" / package / "tests")
    others = {m for m in used if m in OURS and m != package.replace("-", "_")}
    assert not others, f"{package}'s tests import other workspace packages: {sorted(others)}"
    missing = {m: sorted(f) for m, f in used.items() if _distribution(m) not in declared}
    assert not missing, f"{package}: tests import what [test] does not declare: {missing}"
