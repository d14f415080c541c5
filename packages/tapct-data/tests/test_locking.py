"""The output-folder lock: one holder, named to the second; freed on release."""

from __future__ import annotations

import os

import pytest
from tapct_data.locking import LOCK_FILE, FolderLockedError, folder_lock


def test_second_holder_is_refused_with_the_first_ones_pid_then_may_lock(tmp_path):
    with folder_lock(tmp_path) as path:
        assert path == tmp_path / LOCK_FILE
        # flock belongs to an open file description: a second open conflicts, as another
        # process's would.
        with (
            pytest.raises(FolderLockedError, match=rf"pid {os.getpid()} on ") as info,
            folder_lock(tmp_path),
        ):
            pass
        assert str(info.value).startswith(f"{tmp_path}: in use by another process (pid ")
        assert info.value.folder == tmp_path
    with folder_lock(tmp_path):  # released: a new holder proceeds
        pass


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError), folder_lock(tmp_path / "missing"):
        pass
