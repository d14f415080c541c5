"""The CLI surface: instant help, error policy, models table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tapct_app.cli import main


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tapct_app", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_help_does_not_import_torch():
    code = ("import sys; from tapct_app.cli import main; "
            "rc = main(['--help']); "
            "assert 'torch' not in sys.modules, 'torch imported by --help'; "
            "assert 'tapct_data' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pretrain" in out.stdout and "benchmark" in out.stdout


@pytest.mark.parametrize("command", ["pretrain", "embed", "benchmark", "preprocess",
                                     "fingerprint", "models", "retrieve", "export", "configs"])
def test_every_command_has_help(command, capsys):
    assert main([command, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_models_table_lists_presets_with_counts():
    out = _run("models")
    assert out.returncode == 0, out.stderr
    assert "tap_b_3d" in out.stdout and "58,800" in out.stdout
    assert "87.08M" in out.stdout  # ViT-B with 3D patch embed (paper: about 86M)


def test_configs_lists_shipped_files(capsys):
    assert main(["configs"]) == 0
    assert "tap_b_3d" in capsys.readouterr().out


def test_user_error_is_one_line_without_traceback(tmp_path, capsys):
    rc = main(["pretrain", "--data", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == f"tapct: error: {tmp_path / 'missing.nii.gz'}: no such file or directory"
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback(tmp_path):
    from tapct_app.errors import UserError

    with pytest.raises(UserError):
        main(["--debug", "pretrain", "--data", str(tmp_path / "missing")])


def test_bad_roi_text(tmp_path, capsys):
    rc = main(["embed", str(tmp_path), "--model", "tap_nano_3d", "-o", str(tmp_path / "o"),
               "--roi", "12,abc,64"])
    assert rc == 2
    assert "--roi '12,abc,64': expected three integers D,H,W" in capsys.readouterr().err


def test_bad_set_override(capsys):
    assert main(["pretrain", "--set", "train.iterations=-1", "-o", "/nonexistent/x"]) == 2
    assert "iterations must be positive" in capsys.readouterr().err


def test_click_usage_error_exit_code(capsys):
    assert main(["embed"]) == 2  # missing arguments: click's own usage error
