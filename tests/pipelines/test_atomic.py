"""pipelines/atomic.py: facepipe's one temp-then-rename writer."""

from __future__ import annotations

import errno
import io
import os
import pathlib
import stat

import pytest

from pipelines import atomic


def test_a_write_replaces_the_file_whole_and_keeps_its_mode(tmp_path):
    path = tmp_path / "overrides.csv"
    path.write_text("old\n")
    os.chmod(path, 0o600)
    atomic.write(str(path), "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["overrides.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic.writing(str(path)) as temporary:
        with open(temporary, "w") as f:
            f.write("half")
        raise RuntimeError("killed while writing")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_rename_that_fails_leaves_no_temporary_and_names_the_path(tmp_path):
    (tmp_path / "predictions.csv").mkdir()  # A folder where the file goes.
    with pytest.raises(IsADirectoryError) as raised:
        atomic.write(str(tmp_path / "predictions.csv"), "path,probability\n")
    assert raised.value.filename == str(tmp_path / "predictions.csv")  # Not the temporary's name.
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


def test_a_folder_whose_rename_fails_leaves_the_old_folder_in_place(tmp_path, monkeypatch):
    path = tmp_path / "export"
    path.mkdir()
    (path / "saved_model.pb").write_text("old")
    renames = []

    def rename(source, target):
        renames.append(target)
        if len(renames) == 2:  # The new folder onto ``path``, once the old one is moved aside.
            raise OSError(errno.ENOSPC, "No space left on device", source)
        os.replace(source, target)

    monkeypatch.setattr(atomic.LOCAL, "rename", rename)
    with pytest.raises(OSError, match="No space left"), atomic.writing(str(path)) as temporary:
        os.makedirs(temporary)
        pathlib.Path(temporary, "saved_model.pb").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert (path / "saved_model.pb").read_text() == "old"


def test_temporary_names_and_their_leftovers(tmp_path):
    temporary = atomic.temporary_path(str(tmp_path / "model.keras"), keep_extension=True)
    assert temporary.endswith(".tmp.keras") and os.path.dirname(temporary) == str(tmp_path)
    assert atomic.is_temporary(os.path.basename(temporary), of="model.keras")
    assert atomic.final_name(os.path.basename(temporary)) == "model.keras"
    assert (
        atomic.final_name(os.path.basename(atomic.temporary_path("/j/epoch-001.weights.h5"))) == "epoch-001.weights.h5"
    )
    for name in ("model.keras", ".model.keras.facepipe-draft.tmp", ".model.keras.facepipe-0123456789abcdef.tmp.h5"):
        assert atomic.final_name(name) is None, name
    ours = [".overrides.csv.facepipe-0123456789abcdef.tmp", ".overrides.csv.facepipe-fedcba9876543210.tmp.csv"]
    others = [
        ".overrides.csv.x1y2z3w4.tmp",  # Not facepipe's name.
        ".labels.csv.facepipe-0123456789abcdef.tmp",  # Another file's.
        "overrides.csv.facepipe-0123456789abcdef.tmp",
        ".overrides.csv.facepipe-0123456789abcdef.tmp.bak",
    ]
    for name in ours + others:
        (tmp_path / name).write_text("x")
    (tmp_path / ".overrides.csv.facepipe-00000000000000ff.tmp").mkdir()  # A folder is never removed.
    assert atomic.remove_leftovers(str(tmp_path / "overrides.csv")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*others, ".overrides.csv.facepipe-00000000000000ff.tmp"]
    )


class _Memory:
    """A remote filesystem in a dict (what a caller's Files adapter provides)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}

    def exists(self, path):
        return path in self.files

    def isdir(self, path):
        return False

    def remove(self, path):
        del self.files[path]

    rmtree = remove

    def rename(self, source, target):
        self.files[target] = self.files.pop(source)

    def create(self, path):
        files = self.files

        class Writer(io.BytesIO):
            def close(self):
                files[path] = self.getvalue()
                super().close()

        return Writer()


def test_remote_paths_go_through_the_callers_filesystem():
    memory = _Memory()
    atomic.write("mem://bucket/job/metrics.json", '{"a": 1}', remote=memory)
    assert memory.files == {"mem://bucket/job/metrics.json": b'{"a": 1}'}
