"""Every CLI command against every kind of bad input, checked by one contract (issue 13).

Each row of ``CASES`` is one command line, run in-process through ``tapct_app.cli.main``
(importing torch per subprocess would cost most of the budget), and what must come of
it:

- ``error``: exit status 2, exactly one ``tapct: error:`` line on stderr that names the
  path (or option) at fault literally, every other stderr line a ``tapct: warning:``, no
  traceback, and neither the inputs nor the output folder changed (no half-written
  output);
- ``ok``: exit status 0, no error line, no traceback, the inputs unchanged, and the given
  text printed literally (user paths with rich markup such as ``out[ct].zarr``);
- ``skipped``: an archive with bad scans: exit status 0, every bad scan listed with a
  reason in the command's skip report (``skipped.jsonl`` or the fingerprint's
  ``"skipped"``), reasons without the path (one wording, ``tapct_data.skip_reason``).

Placeholders in the command lines: ``{S}`` the shared real scans, ``{R}`` their
``robustness/`` folder, ``{W}`` the folder of broken files and tiny models
(``bad_workspace``), ``{O}`` an empty output folder per case. Adding a command's cases is
one line each. The README's "Errors and bad input" table states the same contract.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import attrs
import pytest
from tapct_app.cli import main

NANO = "-m {W}/models/nano --device cpu"  # the tiny model (tap_nano_3d, random weights)
EMB = "--no-pca " + NANO
# A pretraining run of seconds on the CPU: tap_nano_3d, small crops and heads, 1 iteration.
TINY_PRETRAIN = " ".join(
    f"--set {s}" for s in (
        "data.slab_depth=4", "data.in_plane_size=[40,40]", "data.num_workers=0",
        "crops.global_crops_size=[4,32,32]", "crops.local_crops_size=[4,16,16]",
        "crops.local_crops_number=2", "objective.dino_head_n_prototypes=64",
        "objective.dino_head_hidden_dim=32", "objective.dino_head_bottleneck_dim=16",
        "objective.ibot_head_n_prototypes=64", "objective.ibot_head_hidden_dim=32",
        "objective.ibot_head_bottleneck_dim=16", "log_every=1")
) + " --config demo --preset tap_nano_3d --iterations 1 --batch-size 2 --device cpu"

# The robustness files alone: what reading each one gives (README of shared/data).
ROBUSTNESS = {
    "dicom_gantry_tilt_14deg": ("ok", "gantry tilt"),  # read (resampled), noise pixels
    "dicom_missing_slice": ("error", "uneven slice steps"),
    "dicom_same_position": ("error", "duplicate slice positions"),
    "dicom_two_slabs_gap": ("error", "uneven slice steps"),
    "dicom_jpegls_mr": ("error", "Modality is 'MR'"),
    "dicom_rle_mr": ("error", "Modality is 'MR'"),
    "enhanced_ct_multiframe.dcm": ("ok", ""),
    "dicom_truncated_pixels.dcm": ("error", "corrupt or truncated pixel data"),
    "dicom_no_file_meta.dcm": ("error", "cannot parse DICOM header"),
    "nifti_rgb_not_hu.nii.gz": ("error", "structured dtype"),
    "image_2d.mha": ("error", "2D image"),
}
# The whole folder as an archive: the bad scans skipped and reported. dicom_jpegls_mr and
# dicom_rle_mr share one SeriesInstanceUID, so the walk makes them one 8-file series.
ARCHIVE_SKIPPED = [
    "dicom_jpegls_mr", "dicom_missing_slice", "dicom_no_file_meta.dcm", "dicom_same_position",
    "dicom_truncated_pixels.dcm", "dicom_two_slabs_gap", "image_2d.mha",
    "nifti_rgb_not_hu.nii.gz",
]


@attrs.frozen
class Case:
    """One command line and what must come of it.

    Attributes:
        id: The test id.
        argv: The command line (whitespace-separated, placeholders ``{S} {R} {W} {O}``).
        expect: ``error``, ``ok`` or ``skipped``.
        names: ``error``: text the error line must contain (the path or option at fault,
            literally); ``ok``: text stdout must contain literally.
        words: ``error``: words of the problem the line must contain.
        report: ``skipped``: the skip report (``.jsonl`` or a fingerprint ``.json``).
        skipped: ``skipped``: the names of the sources it must list.
        writes: ``ok``/``skipped``: whether the output folder may change (False for
            ``--dry-run``, ``models``, ``configs``).
        terminal: Run as on a terminal (``FORCE_COLOR=1``: progress bars, colours).
    """

    id: str
    argv: str
    expect: str
    names: str = ""
    words: str = ""
    report: str = ""
    writes: bool = True
    terminal: bool = False
    skipped: tuple[str, ...] = tuple(ARCHIVE_SKIPPED)

    def param(self):
        return pytest.param(self, id=self.id)


def E(id, argv, names, words=""):  # noqa: N802 - a row of the table
    return Case(id, argv, "error", names, words)


def OK(id, argv, names="", writes=True, terminal=False):  # noqa: N802
    return Case(id, argv, "ok", names, writes=writes, terminal=terminal)


def SKIP(id, argv, report, skipped=tuple(ARCHIVE_SKIPPED)):  # noqa: N802
    return Case(id, argv, "skipped", report=report, skipped=tuple(skipped))


def _alone(command: str, extra: str, outcome: dict[str, tuple[str, str]]) -> list[Case]:
    rows = []
    for name, (expect, words) in outcome.items():
        argv = f"{command} {{R}}/{name} {extra}"
        if expect == "ok":
            rows.append(OK(f"{command}-alone-{name}", argv))
        else:
            rows.append(E(f"{command}-alone-{name}", argv, f"{{R}}/{name}", words))
    return rows


_FP_ALONE = {**ROBUSTNESS, "dicom_gantry_tilt_14deg": ("error", "no foreground")}  # noise

CASES = [
    # ------------------------------------------------------------------ preprocess
    *_alone("preprocess", "-o {O}/s.zarr --workers 1", ROBUSTNESS),
    SKIP("preprocess-archive", "preprocess {R} -o {O}/s.zarr --workers 1",
         "{O}/s.zarr/skipped.jsonl"),
    SKIP("preprocess-list-with-a-gone-scan", "preprocess {W}/list.txt -o {O}/s.zarr --workers 1",
         "{O}/s.zarr/skipped.jsonl", ["gone.nii.gz"]),
    E("preprocess-csv-without-path", "preprocess {W}/bad.csv -o {O}/s.zarr", "{W}/bad.csv",
      "'path' column"),
    OK("preprocess-dry-run-archive", "preprocess {R} --dry-run", "dicom_no_file_meta.dcm",
       writes=False),
    E("preprocess-mr", "preprocess {S}/mr/example_mr_sm.nii.gz -o {O}/s.zarr --workers 1",
      "{S}/mr/example_mr_sm.nii.gz", "pass --allow-non-ct"),
    OK("preprocess-mr-allowed",
       "preprocess {S}/mr/example_mr_sm.nii.gz -o {O}/s.zarr --workers 1 --allow-non-ct"),
    E("preprocess-missing", "preprocess {W}/nope.nii.gz -o {O}/s.zarr", "{W}/nope.nii.gz",
      "no such file"),
    E("preprocess-empty-folder", "preprocess {W}/empty -o {O}/s.zarr", "{W}/empty",
      "no scans found"),
    E("preprocess-garbage", "preprocess {W}/garbage.nii.gz -o {O}/s.zarr --workers 1",
      "{W}/garbage.nii.gz", "cannot read NIfTI"),
    E("preprocess-truncated", "preprocess {W}/trunc.nii.gz -o {O}/s.zarr --workers 1",
      "{W}/trunc.nii.gz"),
    E("preprocess-gzip-of-text", "preprocess {W}/not_gzip.nii.gz -o {O}/s.zarr --workers 1",
      "{W}/not_gzip.nii.gz"),
    E("preprocess-o-is-file", "preprocess {S}/ct/example_ct_sm.nii.gz -o {W}/afile.txt",
      "{W}/afile.txt", "is not a folder"),
    E("preprocess-o-under-file", "preprocess {S}/ct/example_ct_sm.nii.gz -o {W}/afile.txt/s",
      "{W}/afile.txt", "is a file"),
    E("preprocess-o-foreign-folder", "preprocess {S}/ct/example_ct_sm.nii.gz -o {W}/models "
      "--workers 1", "{W}/models", "not a scan store"),
    E("preprocess-shard-range", "preprocess {S}/ct/example_ct_sm.nii.gz -o {O}/s --shard 3/2",
      "--shard", "0 <= K < N"),
    E("preprocess-shard-text", "preprocess {S}/ct/example_ct_sm.nii.gz -o {O}/s --shard x",
      "--shard", "K/N"),
    E("preprocess-on-error", "preprocess {S}/ct/example_ct_sm.nii.gz -o {O}/s --on-error no",
      "--on-error"),
    E("preprocess-list-file-is-folder", "preprocess {S}/ct --dry-run --list-file {W}/empty",
      "{W}/empty", "is a folder"),
    E("preprocess-workers-0", "preprocess {S}/ct -o {O}/s --workers 0", "--workers"),
    OK("preprocess-markup-brackets",
       "preprocess {S}/ct/example_ct_sm.nii.gz -o {O}/out[ct].zarr --workers 1",
       "{O}/out[ct].zarr/skipped.jsonl"),
    OK("preprocess-markup-close-tag",
       "preprocess {S}/ct/example_ct_sm.nii.gz -o {O}/a[/b].zarr --workers 1", "{O}/a[/b].zarr"),
    OK("preprocess-markup-terminal", "preprocess {S}/ct/example_ct_sm.nii.gz {R}/image_2d.mha "
       "-o {O}/t[/b][ct].zarr --workers 1", "{O}/t[/b][ct].zarr/skipped.jsonl", terminal=True),
    E("preprocess-markup-missing", "preprocess {W}/x[/b][red].nii.gz -o {O}/s",
      "{W}/x[/b][red].nii.gz", "no such file"),
    # ------------------------------------------------------------------ fingerprint
    *_alone("fingerprint", "--workers 1", _FP_ALONE),
    SKIP("fingerprint-archive", "fingerprint {R} --workers 1 -o {O}/fp.json", "{O}/fp.json"),
    E("fingerprint-no-foreground", "fingerprint {W}/air.nii.gz --workers 1", "{W}/air.nii.gz",
      "no foreground"),
    E("fingerprint-mr", "fingerprint {S}/mr/example_mr_sm.nii.gz --workers 1",
      "{S}/mr/example_mr_sm.nii.gz", "pass --allow-non-ct"),
    E("fingerprint-o-is-folder", "fingerprint {S}/ct/example_ct_sm.nii.gz -o {W}/empty",
      "{W}/empty", "is a folder"),
    E("fingerprint-missing", "fingerprint {W}/nope.nii.gz", "{W}/nope.nii.gz"),
    E("fingerprint-empty-folder", "fingerprint {W}/empty", "{W}/empty", "no scans found"),
    E("fingerprint-garbage", "fingerprint {W}/garbage.nii.gz --workers 1",
      "{W}/garbage.nii.gz"),
    E("fingerprint-csv-without-path", "fingerprint {W}/bad.csv", "{W}/bad.csv", "'path' column"),
    E("fingerprint-samples-0", "fingerprint {S}/ct --samples-per-scan 0", "--samples-per-scan"),
    OK("fingerprint-markup-terminal", "fingerprint {S}/ct/example_ct_sm.nii.gz {W}/a[/b].nii.gz "
       "--workers 1", "{W}/a[/b].nii.gz: cannot read NIfTI", terminal=True),
    OK("fingerprint-markup", "fingerprint {S}/ct/example_ct_sm.nii.gz --workers 1 "
       "-o {O}/fp[/b][ct].json", "{O}/fp[/b][ct].json"),
    # ------------------------------------------------------------------ embed
    # --in-plane 64,64: the two readable scans are 512 x 512; the model sees 64 x 64 slices
    SKIP("embed-archive", f"embed {{R}} -o {{O}}/e --in-plane 64,64 {EMB}",
         "{O}/e/skipped.jsonl"),
    OK("embed-one-scan", f"embed {{S}}/ct/example_ct_sm.nii.gz -o {{O}}/e[/b] {EMB}",
       "{O}/e[/b]"),
    E("embed-2d", f"embed {{R}}/image_2d.mha -o {{O}}/e {EMB}", "{R}/image_2d.mha", "2D image"),
    E("embed-truncated-dicom", f"embed {{R}}/dicom_truncated_pixels.dcm -o {{O}}/e {EMB}",
      "{R}/dicom_truncated_pixels.dcm", "truncated"),
    E("embed-mr", f"embed {{S}}/mr/example_mr_sm.nii.gz -o {{O}}/e {EMB}",
      "{S}/mr/example_mr_sm.nii.gz", "pass --allow-non-ct"),
    OK("embed-mr-allowed", f"embed {{S}}/mr/example_mr_sm.nii.gz -o {{O}}/e {EMB} --allow-non-ct"),
    E("embed-garbage", f"embed {{W}}/garbage.nii.gz -o {{O}}/e {EMB}", "{W}/garbage.nii.gz"),
    SKIP("embed-list-with-a-gone-scan", f"embed {{W}}/list.txt -o {{O}}/e {EMB}",
         "{O}/e/skipped.jsonl", ["gone.nii.gz"]),
    E("embed-missing", f"embed {{W}}/nope.nii.gz -o {{O}}/e {EMB}", "{W}/nope.nii.gz"),
    E("embed-empty-folder", f"embed {{W}}/empty -o {{O}}/e {EMB}", "{W}/empty"),
    E("embed-model-truncated", "embed {S}/ct/example_ct_sm.nii.gz -o {O}/e -m {W}/models/trunc",
      "{W}/models/trunc", "cannot load a model"),
    E("embed-model-bad-config", "embed {S}/ct/example_ct_sm.nii.gz -o {O}/e "
      "-m {W}/models/bad_config", "{W}/models/bad_config", "cannot load a model"),
    E("embed-model-empty-folder", "embed {S}/ct/example_ct_sm.nii.gz -o {O}/e "
      "-m {W}/models/empty", "{W}/models/empty", "cannot load a model"),
    E("embed-model-unknown", "embed {S}/ct/example_ct_sm.nii.gz -o {O}/e -m tap_nope",
      "tap_nope", "not a preset"),
    E("embed-o-is-file", f"embed {{S}}/ct/example_ct_sm.nii.gz -o {{W}}/afile.txt {EMB}",
      "{W}/afile.txt", "is not a folder"),
    E("embed-roi-text", f"embed {{S}}/ct -o {{O}}/e --roi abc {EMB}", "--roi"),
    E("embed-roi-patch", f"embed {{S}}/ct/example_ct_sm.nii.gz -o {{O}}/e --roi 5,5,5 {EMB}",
      "--roi", "multiple of the model's patch size"),
    E("embed-roi-zero", f"embed {{S}}/ct -o {{O}}/e --roi 0,8,8 {EMB}", "--roi", "positive"),
    E("embed-overlap-range", f"embed {{S}}/ct -o {{O}}/e --overlap 1.5 {EMB}", "--overlap"),
    E("embed-overlap-text", f"embed {{S}}/ct -o {{O}}/e --overlap abc {EMB}", "--overlap"),
    E("embed-format", f"embed {{S}}/ct -o {{O}}/e --format npy {EMB}", "--format"),
    E("embed-in-plane", f"embed {{S}}/ct -o {{O}}/e --in-plane 1,2,3 {EMB}", "--in-plane"),
    E("embed-intensity-stats-folder", f"embed {{S}}/ct/example_ct_sm.nii.gz -o {{O}}/e "
      f"--intensity-stats {{W}}/empty {EMB}", "{W}/empty"),
    E("embed-workers-0", f"embed {{S}}/ct -o {{O}}/e --workers 0 {EMB}", "--workers"),
    E("embed-sw-batch-0", f"embed {{S}}/ct -o {{O}}/e --sw-batch-size 0 {EMB}",
      "--sw-batch-size"),
    E("embed-on-error", f"embed {{S}}/ct -o {{O}}/e --on-error maybe {EMB}", "--on-error"),
    E("embed-device", "embed {S}/ct/example_ct_sm.nii.gz -o {O}/e -m {W}/models/nano "
      "--device tpu", "--device"),
    # ------------------------------------------------------------------ pretrain
    OK("pretrain-markup-output", f"pretrain --data {{S}}/ct/example_ct_sm.nii.gz "
       f"-o {{O}}/run[/b][ct] {TINY_PRETRAIN}", "{O}/run[/b][ct]/model/"),
    E("pretrain-data-mr", "pretrain --config demo --preset tap_nano_3d --device cpu --data "
      "{S}/mr/example_mr_sm.nii.gz -o {O}/run", "{S}/mr/example_mr_sm.nii.gz",
      "tapct preprocess --allow-non-ct"),
    E("pretrain-data-missing", "pretrain --data {W}/nope.nii.gz -o {O}/run", "{W}/nope.nii.gz"),
    E("pretrain-data-garbage", "pretrain --config demo --preset tap_nano_3d --data "
      "{W}/garbage.nii.gz -o {O}/run --device cpu", "{W}/garbage.nii.gz", "no scan could be read"),
    E("pretrain-o-is-file", "pretrain --config demo --data {S}/ct/example_ct_sm.nii.gz "
      "-o {W}/afile.txt", "{W}/afile.txt", "is not a folder"),
    E("pretrain-set-not-a-number", "pretrain --data {S}/ct/example_ct_sm.nii.gz "
      "--set train.iterations=abc -o {O}/run", "train.iterations", "expected an integer"),
    E("pretrain-set-no-equals", "pretrain --set train.iterations -o {O}/run", "train.iterations"),
    E("pretrain-set-unknown-key", "pretrain --set train.nope=1 -o {O}/run", "train", "nope"),
    E("pretrain-config-unknown", "pretrain --config nope -o {O}/run", "nope", "unknown config"),
    E("pretrain-config-not-yaml", "pretrain --config {W}/bad.yaml -o {O}/run", "{W}/bad.yaml"),
    E("pretrain-set-library-section", "pretrain --set optim.base_lr=abc -o {O}/run",
      "optim.base_lr", "expected a number"),
    E("pretrain-device", "pretrain --device tpu -o {O}/run", "--device", "unknown device"),
    E("pretrain-batch-size-0", "pretrain --batch-size 0 -o {O}/run", "batch_size", "positive"),
    E("pretrain-iterations-text", "pretrain --iterations abc -o {O}/run", "--iterations"),
    E("pretrain-stop-after-0", "pretrain --stop-after 0 -o {O}/run", "--stop-after"),
    E("pretrain-intensity-stats-missing", "pretrain --intensity-stats {W}/nope.json -o {O}/run",
      "{W}/nope.json"),
    # ------------------------------------------------------------------ export
    E("export-missing", "export {W}/nope.pt -o {O}/m", "{W}/nope.pt"),
    E("export-folder-without-checkpoint", "export {W}/empty -o {O}/m", "{W}/empty",
      "no checkpoint"),
    E("export-garbage-checkpoint", "export {W}/garbage.pt -o {O}/m", "{W}/garbage.pt"),
    E("export-o-is-file", "export {W}/garbage.pt -o {W}/afile.txt", "{W}/afile.txt"),
    E("export-which", "export {W}/garbage.pt -o {O}/m --which both", "--which"),
    # ------------------------------------------------------------------ benchmark
    E("benchmark-task-missing", f"benchmark {{W}}/nope.yaml -o {{O}}/b {NANO}", "{W}/nope.yaml"),
    E("benchmark-task-is-folder", f"benchmark {{W}}/empty -o {{O}}/b {NANO}", "{W}/empty"),
    E("benchmark-task-not-yaml", f"benchmark {{W}}/bad.yaml -o {{O}}/b {NANO}", "{W}/bad.yaml"),
    E("benchmark-bad-image", f"benchmark {{W}}/task_bad_image.yaml -o {{O}}/b --seeds 0 {NANO}",
      "{W}/garbage.nii.gz", "cannot read NIfTI"),
    E("benchmark-model-truncated", "benchmark {W}/task.yaml -o {O}/b -m {W}/models/trunc",
      "{W}/models/trunc", "cannot load a model"),
    E("benchmark-seeds", f"benchmark {{W}}/task.yaml -o {{O}}/b --seeds a,b {NANO}", "--seeds"),
    E("benchmark-o-is-file", f"benchmark {{W}}/task.yaml -o {{W}}/afile.txt {NANO}",
      "{W}/afile.txt", "is not a folder"),
    # ------------------------------------------------------------------ retrieve
    E("retrieve-scan-garbage", "retrieve {W}/garbage.nii.gz {W}/air_mask.nii.gz "
      f"{{S}}/ct/example_ct_sm.nii.gz -o {{O}}/r {NANO}", "{W}/garbage.nii.gz"),
    E("retrieve-mask-missing", "retrieve {S}/ct/example_ct_sm.nii.gz {W}/nope.nii.gz "
      f"{{S}}/ct/example_ct_sm.nii.gz -o {{O}}/r {NANO}", "{W}/nope.nii.gz"),
    E("retrieve-mask-empty", "retrieve {S}/ct/example_ct_sm.nii.gz {W}/air_mask.nii.gz "
      f"{{S}}/ct/example_ct_sm.nii.gz -o {{O}}/r {NANO}", "{W}/air_mask.nii.gz", "no voxel"),
    E("retrieve-target-truncated", "retrieve {S}/ct/example_ct_sm.nii.gz "
      "{S}/labels/example_ct_sm_seg.nii.gz {W}/trunc.nii.gz "
      f"-o {{O}}/r {NANO}", "{W}/trunc.nii.gz"),
    E("retrieve-o-is-file", "retrieve {S}/ct/example_ct_sm.nii.gz {W}/air_mask.nii.gz "
      f"{{S}}/ct/example_ct_sm.nii.gz -o {{W}}/afile.txt {NANO}", "{W}/afile.txt"),
    E("retrieve-roi", "retrieve {S}/ct/example_ct_sm.nii.gz {W}/air_mask.nii.gz "
      f"{{S}}/ct/example_ct_sm.nii.gz -o {{O}}/r --roi 1,2 {NANO}", "--roi"),
    E("retrieve-top-k", "retrieve {S}/ct/example_ct_sm.nii.gz {W}/air_mask.nii.gz "
      f"{{S}}/ct/example_ct_sm.nii.gz -o {{O}}/r --top-k 0 {NANO}", "--top-k"),
    E("retrieve-model-truncated", "retrieve {S}/ct/example_ct_sm.nii.gz {W}/air_mask.nii.gz "
      "{S}/ct/example_ct_sm.nii.gz -o {O}/r -m {W}/models/trunc", "{W}/models/trunc"),
    # ------------------------------------------------------------------ models, configs, usage
    OK("models", "models", "58,800", writes=False),
    OK("configs", "configs", "tap_b_3d", writes=False),
    E("models-extra-argument", "models extra", "extra"),
    E("unknown-command", "embedd", "embedd"),
    E("missing-option", "embed {S}/ct -o {O}/e", "--model"),
]


# --------------------------------------------------------------------------- the contract


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a digest of its bytes (folders as ``<dir>``)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _skip_rows(report: Path) -> list[dict[str, str]]:
    if report.suffix == ".jsonl":
        return [json.loads(line) for line in report.read_text().splitlines() if line]
    return json.loads(report.read_text())["skipped"]


def check_contract(case: Case, rc: int, out: str, err: str, fill, before, after) -> None:
    """Assert the contract of ``case`` (see the module docstring) on one run's outcome."""
    both = out + err
    assert "Traceback" not in both, both
    errors = [line for line in err.splitlines() if line.startswith("tapct: error:")]
    others = [line for line in err.splitlines()
              if line.strip() and not line.startswith(("tapct: error:", "tapct: warning:"))]
    assert not others, f"stray stderr lines: {others}"
    assert after["inputs"] == before["inputs"], "an input was changed"
    if case.expect == "error":
        assert rc == 2, (rc, both)
        assert len(errors) == 1, errors
        assert fill(case.names) in errors[0], (fill(case.names), errors[0])
        assert case.words in errors[0], (case.words, errors[0])
        assert after["out"] == before["out"], "a failed command left output behind"
        return
    assert rc == 0, (rc, both)
    assert not errors, errors
    if not case.writes:
        assert after["out"] == before["out"], "a read-only command wrote"
    if case.expect == "ok":
        assert fill(case.names) in out, (fill(case.names), out)
        return
    rows = _skip_rows(Path(fill(case.report)))
    reported = [r["path"] for r in rows]
    for name in case.skipped:
        assert any(Path(p.split(" (DICOM series")[0]).name == name for p in reported), (
            name, reported)
    for row in rows:  # one wording: the reason is the problem, the path is separate
        assert row["reason"] and not row["reason"].startswith(row["path"].split(" (")[0]), row


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_input_contract(case: Case, bad_workspace, shared_data, tmp_path, capsys,
                            monkeypatch):
    if case.terminal:
        monkeypatch.setenv("FORCE_COLOR", "1")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def fill(text: str) -> str:
        return text.format(S=shared_data, R=shared_data / "robustness", W=bad_workspace,
                           O=out_dir)

    argv = [fill(a) for a in case.argv.split()]
    before = {"inputs": _tree(bad_workspace), "out": _tree(out_dir)}
    capsys.readouterr()
    rc = main(argv)
    captured = capsys.readouterr()
    after = {"inputs": _tree(bad_workspace), "out": _tree(out_dir)}
    check_contract(case, rc, captured.out, captured.err, fill, before, after)


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert {c.argv.split()[0] for c in CASES} >= {
        "pretrain", "export", "embed", "benchmark", "preprocess", "fingerprint", "retrieve",
        "models", "configs"}
