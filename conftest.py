"""Workspace-wide pytest fixtures: the real scans and the GPU marker.

The real CT scans live in ``../shared/data`` next to the checkout (never copied into the
repository). ``TAPCT_SHARED_DATA`` overrides the location. In CI (``CI`` set) a missing
folder fails the run, so the real-data tests can never be skipped silently; elsewhere
those tests skip with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent

#: Set by ``.ci/run`` after ``.ci/package-tests`` ran each library package's tests in a
#: venv of its own: the workspace run then collects only the app's and cross-package tests.
PACKAGE_TESTS_DONE_ENV = "TAPCT_PACKAGE_TESTS_DONE"
collect_ignore_glob = ["packages/*"] if os.environ.get(PACKAGE_TESTS_DONE_ENV) else []


def shared_data_dir() -> Path:
    """Return the folder of real scans (``$TAPCT_SHARED_DATA`` or ``../shared/data``)."""
    env = os.environ.get("TAPCT_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the real scans; fails in CI and skips elsewhere when they are missing."""
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        message = f"real scans not found at {path} (set TAPCT_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when CUDA is not available."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
