"""The decode cache: entry format, key, and reruns of the job that reuse it."""

from __future__ import annotations

import glob
import hashlib
import pathlib

import numpy as np
import pytest

from pipelines import cache, features
from pipelines.cache import CachedPixels, CorruptEntry, cache_key, decode_entry, encode_entry
from pipelines.cli import UsageError
from pipelines.preprocess import run
from tests.image_files import write_glasses_like
from tests.pipelines.test_preprocess import _read_split

LABELS = [0, 1] * 6  # 12 images


KEY = "ab" * 32  # An entry's key: the hex name of its file.


def _entry() -> CachedPixels:
    pixels = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    return CachedPixels(pixels, (48, 60))


def test_an_entry_round_trips_with_its_shape_and_original_size():
    decoded = decode_entry(encode_entry(_entry(), KEY), KEY)
    np.testing.assert_array_equal(decoded.pixels, _entry().pixels)
    assert decoded.original_size == (48, 60)


@pytest.mark.parametrize("position", [0, 10, 30, 60, -1])
def test_a_flipped_bit_anywhere_is_detected(position):
    data = bytearray(encode_entry(_entry(), KEY))
    data[position] ^= 0x01
    with pytest.raises(CorruptEntry):
        decode_entry(bytes(data), KEY)


@pytest.mark.parametrize("keep", [0, 5, 70, 300])
def test_a_truncated_entry_is_detected(keep):
    with pytest.raises(CorruptEntry):
        decode_entry(encode_entry(_entry(), KEY)[:keep], KEY)


def test_a_sound_entry_under_another_keys_name_is_detected():
    data = encode_entry(_entry(), KEY)
    with pytest.raises(CorruptEntry, match="another key"):
        decode_entry(data, "cd" * 32)


def test_failed_writes_log_one_warning_not_one_an_image(tmp_path, caplog):
    (tmp_path / "a_file").write_text("not a folder")
    unwritable = cache.DecodeCache(str(tmp_path / "a_file" / "cache"), size=(12, 10), color_mode="rgb")
    with caplog.at_level("WARNING"):
        for image in range(3):  # Each put fails: the cache's folder would lie under a file.
            unwritable.put(hashlib.sha256(bytes([image])).digest(), _entry())
    warnings = [r.getMessage() for r in caplog.records if "decode cache" in r.getMessage()]
    assert len(warnings) == 1 and "further failed writes are not logged" in warnings[0]
    assert not (tmp_path / "a_file").is_dir()


def test_the_key_changes_with_what_changes_the_pixels_only():
    digest = hashlib.sha256(b"image bytes").digest()
    base = {"size": (50, 50), "color_mode": "rgb", "decoder": cache.decoder_version()}
    key = cache_key(digest, **base)
    assert cache_key(digest, **base) == key
    assert cache_key(digest, **{**base, "size": (64, 64)}) != key
    assert cache_key(digest, **{**base, "color_mode": "grayscale"}) != key
    assert cache_key(digest, **{**base, "decoder": base["decoder"] + "x"}) != key
    assert cache_key(hashlib.sha256(b"other bytes").digest(), **base) != key


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cache")
    write_glasses_like(tmp_path, LABELS)
    (tmp_path / "overrides.csv").write_text("id,label\n1,1\n")
    return tmp_path


def _preprocess(tmp_path, name: str, *extra: str) -> dict:
    return run(
        [
            "--images",
            str(tmp_path / "images"),
            "--labels_csv",
            str(tmp_path / "labels.csv"),
            "--file_pattern",
            "face-{id}",
            "--output",
            str(tmp_path / name),
            "--image_size",
            "12,10",
            "--balance",
            "none",
            "--overwrite",
            *extra,
        ]
    )


def _examples(output) -> list[tuple]:
    return sorted(
        (e["id"], e["label"], e["image"]) for split in features.SPLITS for e in _read_split(str(output), split)
    )


def _entries(cache_dir) -> list[str]:
    return sorted(glob.glob(str(cache_dir / "*" / "*.fpdc")))


@pytest.fixture(scope="module")
def cold(data):
    """(cache dir, manifest) of a first run that fills the cache."""
    cache_dir = data / "cache"
    return cache_dir, _preprocess(data, "cold", "--cache_dir", str(cache_dir))


def test_a_cold_run_misses_every_image_and_writes_one_entry_each(cold):
    cache_dir, manifest = cold
    assert manifest["cache"] == {
        "dir": str(cache_dir),
        "cache_hits": 0,
        "cache_misses": len(LABELS),
        "cache_corrupt": 0,
    }
    assert len(_entries(cache_dir)) == len(LABELS)
    assert not glob.glob(str(cache_dir / "*" / ".*.facepipe-*.tmp"))  # pipelines/atomic.py temporaries.


def test_a_warm_run_decodes_nothing_and_writes_what_an_uncached_run_writes(data, cold):
    cache_dir, cold_manifest = cold
    plain = _preprocess(data, "plain")
    warm = _preprocess(data, "warm", "--cache_dir", str(cache_dir))
    assert plain["cache"] == {"dir": None}
    assert warm["cache"]["cache_hits"] == len(LABELS)
    assert (warm["cache"]["cache_misses"], warm["cache"]["cache_corrupt"]) == (0, 0)
    assert _examples(data / "warm") == _examples(data / "plain")
    # The cache does not change what the data is.
    assert warm["fingerprint"]["data"] == plain["fingerprint"]["data"] == cold_manifest["fingerprint"]["data"]


def test_changed_overrides_and_seed_hit_in_a_multi_process_run(data, cold):
    cache_dir, _ = cold
    manifest = _preprocess(
        data,
        "overridden",
        "--cache_dir",
        str(cache_dir),
        "--overrides_csv",
        str(data / "overrides.csv"),
        "--seed",
        "7",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    )
    assert manifest["counts"]["overrides_applied"] == 1
    assert manifest["cache"]["cache_hits"] == len(LABELS)
    assert manifest["cache"]["cache_misses"] == 0


def test_a_changed_image_size_misses(data, cold):
    cache_dir, _ = cold
    manifest = _preprocess(data, "bigger", "--cache_dir", str(cache_dir), "--image_size", "16,16")
    assert manifest["cache"]["cache_hits"] == 0
    assert manifest["cache"]["cache_misses"] == len(LABELS)
    assert len(_read_split(str(data / "bigger"), "train")[0]["image"]) == 16 * 16 * 3


def test_corrupt_and_truncated_entries_are_counted_recomputed_and_rewritten(data):
    cache_dir = data / "cache_damaged"
    _preprocess(data, "damaged_cold", "--cache_dir", str(cache_dir))
    flipped, truncated = _entries(cache_dir)[:2]
    with open(flipped, "r+b") as f:
        f.seek(-5, 2)
        byte = f.read(1)
        f.seek(-5, 2)
        f.write(bytes([byte[0] ^ 0x10]))
    with open(truncated, "r+b") as f:
        f.truncate(40)
    manifest = _preprocess(data, "damaged", "--cache_dir", str(cache_dir))
    assert manifest["cache"]["cache_corrupt"] == 2
    assert manifest["cache"]["cache_hits"] == len(LABELS) - 2
    assert _examples(data / "damaged") == _examples(data / "damaged_cold")
    for path in (flipped, truncated):
        with open(path, "rb") as f:
            decode_entry(f.read(), pathlib.Path(path).stem)  # Rewritten: sound again.


def test_two_sound_entries_swapped_on_disk_are_recomputed_not_served(data):
    cache_dir = data / "cache_swapped"
    _preprocess(data, "swapped_cold", "--cache_dir", str(cache_dir))
    first, second = _entries(cache_dir)[:2]
    first_bytes, second_bytes = pathlib.Path(first).read_bytes(), pathlib.Path(second).read_bytes()
    pathlib.Path(first).write_bytes(second_bytes)  # Each entry sound, under the other's name.
    pathlib.Path(second).write_bytes(first_bytes)
    manifest = _preprocess(data, "swapped", "--cache_dir", str(cache_dir))
    assert manifest["cache"]["cache_corrupt"] == 2
    assert _examples(data / "swapped") == _examples(data / "swapped_cold")  # Nobody got another's pixels.


@pytest.mark.parametrize("where", ["output", "images"])
def test_a_cache_dir_inside_the_output_or_an_input_is_refused(data, where):
    cache_dir = {"output": data / "refused" / "cache", "images": data / "images"}[where]
    with pytest.raises(UsageError, match="--cache_dir"):
        _preprocess(data, "refused", "--cache_dir", str(cache_dir))


@pytest.mark.parametrize("under", ["", "cache"])
def test_a_cache_dir_that_is_or_lies_under_a_file_is_refused_up_front(tmp_path, capsys, under):
    (tmp_path / "file").write_text("a file, not a folder")
    cache_dir = tmp_path / "file" / under if under else tmp_path / "file"
    with pytest.raises(UsageError):
        cache.check_cache_dir(str(cache_dir), str(tmp_path / "out"), (str(tmp_path / "images"),))
    assert capsys.readouterr().err == (
        f"error: --cache_dir {cache_dir}: {tmp_path / 'file'} is a file, not a folder: give a folder for the cache\n"
    )
    cache.check_cache_dir(str(tmp_path / "new" / "cache"), str(tmp_path / "out"), ())  # Made by the run.
