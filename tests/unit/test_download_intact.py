from __future__ import annotations

from pathlib import Path

from controller.download.marker import is_complete, is_intact, measure, write_marker

URI = "http://127.0.0.1:1/model.tar.gz"


def model(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x" * 100)
    (tmp_path / "sub" / "config.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "weights.bin")
    write_marker(tmp_path, uri=URI, files=2, total_bytes=102)
    return tmp_path


def test_measure_counts_model_files_but_not_links_or_the_marker(tmp_path: Path) -> None:
    assert measure(model(tmp_path)) == (2, 102)


def test_model_with_all_its_files_is_intact(tmp_path: Path) -> None:
    assert is_intact(model(tmp_path), URI)


def test_model_that_lost_a_file_is_complete_but_not_intact(tmp_path: Path) -> None:
    dest = model(tmp_path)
    (dest / "weights.bin").unlink()
    assert is_complete(dest, URI)
    assert not is_intact(dest, URI)


def test_model_with_a_truncated_file_is_not_intact(tmp_path: Path) -> None:
    dest = model(tmp_path)
    (dest / "weights.bin").write_bytes(b"x" * 10)
    assert not is_intact(dest, URI)


def test_model_of_another_uri_or_without_marker_is_not_intact(tmp_path: Path) -> None:
    dest = model(tmp_path)
    assert not is_intact(dest, URI + "?other")
    (dest / ".localmodel-complete").unlink()
    assert not is_intact(dest, URI)
