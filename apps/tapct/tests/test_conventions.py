"""CLI conventions: readable help, shell completion, progress, the TensorBoard note."""

from __future__ import annotations

import io
import re
import sys

import pytest
from rich.console import Console
from tapct_app.cli import app, main
from tapct_app.progress import CommandProgress
from typer.testing import CliRunner

COMMANDS = ["", "pretrain", "export", "embed", "benchmark", "preprocess", "fingerprint",
            "models", "configs", "retrieve"]  # fmt: skip
PYTHON_TYPE = re.compile(r"<\w+(\[.*?\])?>|\b(list|tuple|dict)\[|\bNoneType\b")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_python_type_names(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main([*([command] if command else []), "--help"]) == 0
    text = capsys.readouterr().out
    assert "--help" in text
    assert not PYTHON_TYPE.search(text), PYTHON_TYPE.search(text)


def test_help_metavars_are_readable(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    main(["embed", "--help"])
    text = capsys.readouterr().out
    assert "Usage: tapct embed [OPTIONS] {SCAN}..." in text
    for option, metavar in [("--roi", "D,H,W"), ("--in-plane", "H,W"), ("--workers", "N"),
                            ("--output", "PATH"), ("--include", "GLOB")]:  # fmt: skip
        assert re.search(rf"{option}\s+(-\w\s+)?{re.escape(metavar)}\s", text), option


def test_shell_completion_script_and_completions(monkeypatch):
    import shellingham

    # --show-completion is a flag: Typer detects the user's shell (shellingham); say bash.
    monkeypatch.setattr(shellingham, "detect_shell", lambda *a, **k: ("bash", "/bin/bash"))
    runner = CliRunner()
    script = runner.invoke(app, ["--show-completion"], prog_name="tapct")
    assert script.exit_code == 0, (script.output, script.exception)
    assert "complete -o default -F _tapct_completion tapct" in script.output
    # What the installed script asks the program: the candidates for a partial word.
    env = {"_TAPCT_COMPLETE": "complete_bash", "COMP_WORDS": "tapct emb", "COMP_CWORD": "1"}
    assert runner.invoke(app, [], env=env, prog_name="tapct").output.split() == ["embed"]
    env = {"_TAPCT_COMPLETE": "complete_bash", "COMP_WORDS": "tapct embed --ro",
           "COMP_CWORD": "2"}  # fmt: skip
    assert runner.invoke(app, [], env=env, prog_name="tapct").output.split() == ["--roi"]


def _plain_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    console = Console(file=buf, width=40, force_terminal=False, highlight=False)
    console.soft_wrap = True  # as tapct_app.cli._console() sets it without a terminal
    return console, buf


def test_plain_progress_lines_are_whole_on_a_narrow_console():
    console, buf = _plain_console()
    details = "a/very/long/path/to/some/scan/that/is/far/wider/than/forty/columns.nii.gz"
    with CommandProgress(console, "preprocess") as progress:
        for done in range(1, 41):
            progress(done, 40, details if done == 40 else "")
    lines = buf.getvalue().splitlines()
    # One line per 5 %: the first unit, every 2 more (of 40), the last; each whole and plain.
    assert [int(ln.split()[1].split("/")[0]) for ln in lines] == [*range(1, 40, 2), 40]
    plain = r"preprocess: \d+/40 scans \(\d+%\), [\d.]+ scans/s, eta \d:\d\d:\d\d(, .*)?"
    assert all(re.fullmatch(plain, ln) for ln in lines), lines
    assert lines[-1].startswith("preprocess: 40/40 scans (100%), ")
    assert lines[-1].endswith(f", eta 0:00:00, {details}")


def test_pretrain_progress_and_tensorboard_note_without_a_terminal(tiny_config, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    from tapct_app.train.loop import run_pretraining

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    console, buf = _plain_console()
    run_pretraining(tiny_config(2), tmp_path / "run", console=console)
    lines = buf.getvalue().splitlines()
    note = [ln for ln in lines if ln.startswith("TensorBoard: off")]
    assert note == [
        "TensorBoard: off (the tensorboard package is not installed; pip install "
        "'tapct[tensorboard]' or uv sync --extra tensorboard to write "
        f"{tmp_path / 'run' / 'tensorboard'}); metrics go to {tmp_path / 'run' / 'metrics.jsonl'}"
    ]
    bars = [ln for ln in lines if ln.startswith("pretrain: ")]
    assert [b.split(" it ")[0] for b in bars] == ["pretrain: 1/2", "pretrain: 2/2"]
    for line in bars:  # the whole line: count, rate, ETA, every loss, lr, throughput
        assert re.fullmatch(
            r"pretrain: \d/2 it \(\d+%\), [\d.]+ it/s, eta \S+, loss [\d.]+  dino_l [\d.]+"
            r"  dino_g [\d.]+  koleo -?[\d.]+  ibot [\d.]+  H_t [\d.]+  rank [\d.]+  lr [\d.e+-]+"
            r"  [\d.]+ samples/s",
            line,
        ), line


def test_fingerprint_progress_lines_are_uncut(tmp_path, capsys, monkeypatch):
    from tapct_app.train.data import write_demo_phantoms

    write_demo_phantoms(tmp_path / "scans", 2, (8, 24, 24), seed=0)
    monkeypatch.setenv("COLUMNS", "40")  # the console of a 40-column job log
    args = ["fingerprint", str(tmp_path / "scans"), "--workers", "1", "--samples-per-scan", "100"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fingerprint: 1/2 scans (50%), ")
    assert lines[1].startswith("fingerprint: 2/2 scans (100%), ") and "eta 0:00:00" in lines[1]
    assert lines[2].startswith("fingerprint of 2 scan(s), ") and lines[2].endswith(")")
    assert len(lines[2]) > 100  # one line, not wrapped at 40 columns


def test_benchmark_reports_progress_per_case_and_step(tmp_path, capsys, monkeypatch):
    from tapct_data import write_volume
    from tapct_data.phantom import PHANTOM_LABELS, make_phantom

    cases = []
    for i in range(3):
        image, labels = make_phantom(shape=(8, 32, 32), seed=i)
        write_volume(image, tmp_path / f"ct{i}.nii.gz")
        write_volume(labels, tmp_path / f"seg{i}.nii.gz")
        cases.append(f"{{image: ct{i}.nii.gz, label: seg{i}.nii.gz}}")
    (tmp_path / "task.yaml").write_text(
        f"name: phantoms\nkind: segmentation\nroi_size: [4, 32, 32]\n"
        f"num_classes: {len(PHANTOM_LABELS)}\nsteps: 3\naccumulation_steps: 1\n"
        f"train: [{cases[0]}, {cases[1]}]\ntest: [{cases[2]}]\n"
    )
    monkeypatch.setenv("COLUMNS", "40")
    args = ["benchmark", str(tmp_path / "task.yaml"), "--model", "tap_nano_3d", "--seeds", "0",
            "--device", "cpu", "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("benchmark: ")]
    # 3 cases' features + 1 seed x 3 steps = 6 units; a line each (every 5 % of 6 is 1).
    assert [ln.split(" steps ")[0] for ln in lines] == [f"benchmark: {k}/6" for k in range(1, 7)]
    assert lines[0].endswith(", features of ct0")
    assert lines[-1].endswith(", eta 0:00:00, seed 0: step 3/3")


def test_inference_commands_take_the_device_from_devices_not_the_training_package():
    import ast
    from pathlib import Path

    import tapct_app
    from tapct_app.devices import resolve_device

    src = Path(tapct_app.__file__).parent
    for name in ("embed.py", "benchmark.py", "retrieve.py"):
        tree = ast.parse((src / name).read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "tapct_app.devices" in modules, name
        assert not {m for m in modules if m and m.startswith("tapct_app.train")}, name
    assert str(resolve_device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu:7")
