"""pipelines/paths.py: paths that are no files to read (FIFOs, links to nothing) are told apart before a read."""

from __future__ import annotations

import os

from pipelines import paths


def test_fifos_and_dangling_links_are_no_files_to_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    (tmp_path / "face.png").write_bytes(b"x")
    os.symlink(tmp_path / "face.png", tmp_path / "link.png")
    assert paths.not_a_file_reason(str(tmp_path / "pipe.png")) == paths.NOT_A_REGULAR_FILE
    assert paths.not_a_file_reason(str(tmp_path / "dangling.png")) == paths.DANGLING_LINK
    assert paths.not_a_file_reason(str(tmp_path / "face.png")) is None
    assert paths.not_a_file_reason(str(tmp_path / "link.png")) is None  # A link to a file is that file.
    assert paths.not_a_file_reason(str(tmp_path / "absent.png")) is None  # The read reports it.
    assert paths.not_a_file_reason("gs://bucket/face.png") is None


def test_a_loop_of_links_is_a_dangling_link(tmp_path):
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    os.symlink(tmp_path / "b.png", tmp_path / "a.png")
    os.symlink(tmp_path / "self.png", tmp_path / "self.png")
    assert paths.not_a_file_reason(str(tmp_path / "a.png")) == paths.DANGLING_LINK
    assert paths.not_a_file_reason(str(tmp_path / "self.png")) == paths.DANGLING_LINK
