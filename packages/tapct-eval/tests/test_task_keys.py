"""Task-file keys: every kind declares its keys, the documented ones are accepted, any other
key (a misspelling) and a misspelled kind are refused by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tapct_eval import TASK_KINDS, TaskFileError, load_task
from tapct_eval import task as task_module
from tapct_eval.task import COMMON_KEYS

README = Path(__file__).resolve().parents[3] / "README.md"


def _docstring_keys() -> tuple[set[str], dict[str, set[str]]]:
    """Common keys and per-kind keys of the schema in tapct_eval.task's docstring."""
    doc = task_module.__doc__ or ""
    parts = re.split(r"^``(\w+)`` \(", doc, flags=re.M)
    keys = lambda text: set(re.findall(r"^    (\w+):", text, flags=re.M))  # noqa: E731
    return keys(parts[0]), {parts[i]: keys(parts[i + 1]) for i in range(1, len(parts), 2)}


def _readme_examples() -> dict[str, set[str]]:
    """Top-level keys of each kind's example in the README's benchmark section."""
    text = README.read_text()
    block = text.split("## Benchmark", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    docs = [d for d in yaml.safe_load_all(block) if d]
    return {d["kind"]: set(d) for d in docs}


def test_declared_keys_are_the_documented_keys():
    common, per_kind = _docstring_keys()
    assert common == set(COMMON_KEYS)
    assert set(per_kind) == set(TASK_KINDS)
    for kind, spec in TASK_KINDS.items():
        assert set(spec.keys) == per_kind[kind], kind
        assert not set(spec.keys) & set(COMMON_KEYS), kind


@pytest.mark.skipif(not README.is_file(), reason="outside the repository (no README.md)")
def test_readme_examples_use_known_keys():
    examples = _readme_examples()
    assert set(examples) == set(TASK_KINDS)
    for kind, keys in examples.items():
        assert keys <= set(COMMON_KEYS) | set(TASK_KINDS[kind].keys), kind


@pytest.mark.parametrize("kind", list(TASK_KINDS))
def test_unknown_key_is_refused_for_every_kind(tmp_path, kind):
    """The key check comes before the kind's own (required) keys are looked at."""
    f = tmp_path / "t.yaml"
    f.write_text(f"name: t\nkind: {kind}\nroi_size: [4, 8, 8]\nbogus_key: 1\n")
    with pytest.raises(TaskFileError) as err:
        load_task(f)
    msg = str(err.value)
    assert msg.startswith(f"{f}: unknown key 'bogus_key'")
    assert all(k in msg for k in (*COMMON_KEYS, *TASK_KINDS[kind].keys))


def test_misspelled_key_of_a_valid_task_names_the_close_match(tmp_path):
    (tmp_path / "a.nii.gz").touch()
    (tmp_path / "a_seg.nii.gz").touch()
    good = (
        "name: t\nkind: segmentation\nroi_size: [4, 8, 8]\nnum_classes: 2\n"
        "train: [{image: a.nii.gz, label: a_seg.nii.gz}]\n"
        "test: [{image: a.nii.gz, label: a_seg.nii.gz}]\n"
    )
    f = tmp_path / "t.yaml"
    f.write_text(good + "steps: 5\n")
    assert load_task(f).steps == 5
    f.write_text(good + "stpes: 5\nbogus_key: 1\n")
    with pytest.raises(
        TaskFileError,
        match=r"unknown keys 'stpes' \(did you mean steps\?\), "
        r"'bogus_key' for kind segmentation; known keys: name, kind, roi_size",
    ):
        load_task(f)
    f.write_text(good + "ignore_index: 255\nlabel_map: null\nclass_names: [bg, fg]\n")
    assert load_task(f).ignore_index == 255


def test_misspelled_kind_is_reported_before_other_keys(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("name: t\nkind: segmentaton\n")
    with pytest.raises(TaskFileError) as err:
        load_task(f)
    assert str(err.value) == (
        f"{f}: key 'kind': must be one of {', '.join(TASK_KINDS)}, got 'segmentaton' "
        "(did you mean segmentation?)"
    )
    f.write_text("name: t\nkind: [segmentation]\n")
    with pytest.raises(TaskFileError, match="key 'kind': must be one of"):
        load_task(f)
    f.write_text("kind: segmentation\n")
    with pytest.raises(TaskFileError, match="key 'name': is required"):
        load_task(f)
