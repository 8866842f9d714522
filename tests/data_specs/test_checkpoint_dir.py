"""resolve_checkpoint: directories as given, repo ids through a hand-made Hugging Face cache, and every error;
the safe readers of a checkpoint's files (regular files only, sizes bounded, safetensors headers checked, shard
names confined to the folder).

Nothing here reaches the network: every test starts offline (HF_HUB_OFFLINE=1 for our code, and huggingface_hub's
own offline flag patched on, so a stray request raises), and the one download test replaces snapshot_download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.errors
import pytest

from data_specs.checkpoint_dir import (
    MAX_JSON_BYTES,
    CheckpointFileError,
    CheckpointNotFoundError,
    open_checkpoint_file,
    read_checkpoint_file,
    read_json_file,
    resolve_checkpoint,
    safetensors_header,
    weight_files,
)

REPO = "google/gemma-4-E2B-it"
REVISION = "a" * 40  # the snapshot refs/main names
OLD_REVISION = "b" * 40  # an older snapshot still on disk
HAND_DOWNLOAD = f"hf download {REPO} --local-dir DIR"


@pytest.fixture(autouse=True)
def offline_environment(monkeypatch, tmp_path):
    for variable in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default cache, if reached, is the test's own
    # huggingface_hub read HF_HUB_OFFLINE when first imported; make any request it tries fail loudly.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def lay_out_cache(cache: Path, *, with_config: bool = True) -> Path:
    """The cache as huggingface_hub writes it: blobs, refs/main, snapshots/<revision>/ of links into blobs."""
    repo = cache / "models--google--gemma-4-E2B-it"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)  # no newline, as huggingface_hub writes it
    for revision, model_type in ((REVISION, "gemma4"), (OLD_REVISION, "old")):
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        if with_config:
            blob = repo / "blobs" / f"config-{revision[:8]}"
            blob.write_text(json.dumps({"model_type": model_type}))
            (snapshot / "config.json").symlink_to(os.path.relpath(blob, snapshot))
        (snapshot / "tokenizer.json").write_text("{}")
    return (repo / "snapshots" / REVISION).resolve()


def assert_one_line(message: str) -> None:
    assert "\n" not in message and "\r" not in message, message


def test_directory_is_returned_as_given(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert resolve_checkpoint(target) == target
    assert resolve_checkpoint(str(link)) == link  # not resolved through the symlink


def test_existing_directory_wins_over_repo_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "google" / "gemma-4-E2B-it").mkdir(parents=True)
    assert resolve_checkpoint(REPO) == Path(REPO)


def test_repo_id_through_hf_hub_cache(tmp_path, monkeypatch):
    expected = lay_out_cache(tmp_path / "hub-cache")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))  # HF_HUB_CACHE comes first
    found = resolve_checkpoint(REPO)
    assert found.resolve() == expected
    assert json.loads((found / "config.json").read_text()) == {"model_type": "gemma4"}


def test_repo_id_through_hf_home(tmp_path, monkeypatch):
    expected = lay_out_cache(tmp_path / "hf-home" / "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    assert resolve_checkpoint(REPO, allow_download=False).resolve() == expected


def test_repo_id_through_default_cache(tmp_path):
    expected = lay_out_cache(tmp_path / "home" / ".cache" / "huggingface" / "hub")
    assert resolve_checkpoint(REPO).resolve() == expected


def test_absent_repo_offline_is_one_line_error(tmp_path, monkeypatch):
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(CheckpointNotFoundError) as caught:
        resolve_checkpoint(REPO)
    message = str(caught.value)
    assert_one_line(message)
    assert f"'{REPO}'" in message
    assert str(cache) in message
    assert "downloads are off: HF_HUB_OFFLINE=1" in message
    assert HAND_DOWNLOAD in message
    assert isinstance(caught.value, FileNotFoundError)


def test_snapshot_without_config_counts_as_absent(tmp_path, monkeypatch):
    lay_out_cache(tmp_path / "cache", with_config=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointNotFoundError, match="is not in the Hugging Face cache"):
        resolve_checkpoint(REPO)


class FakeSnapshotDownload:
    """Stands in for huggingface_hub.snapshot_download: nothing cached; a download fills `folder` or fails."""

    def __init__(self, folder: Path, failure: Exception | None = None):
        self.folder, self.failure, self.calls = folder, failure, []

    def __call__(self, repo_id, **kwargs):
        self.calls.append((repo_id, kwargs))
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        if self.failure is not None:
            raise self.failure
        self.folder.mkdir(parents=True)
        (self.folder / "config.json").write_text("{}")
        return str(self.folder)

    def downloads(self) -> list:
        return [call for call in self.calls if not call[1].get("local_files_only")]


def test_download_branch_fetches_the_published_files(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    fake = FakeSnapshotDownload(tmp_path / "cache" / "downloaded")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)

    assert resolve_checkpoint(REPO) == tmp_path / "cache" / "downloaded"
    [(repo_id, kwargs)] = fake.downloads()
    assert repo_id == REPO
    assert Path(kwargs["cache_dir"]) == tmp_path / "cache"
    assert set(kwargs["allow_patterns"]) == {
        "config.json",
        "generation_config.json",
        "*.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "processor_config.json",
        "tokenizer.model",
    }


def test_download_failure_gives_cause_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    failure = ConnectionError("no route to host\nsecond line of detail " + "x" * 300)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeSnapshotDownload(tmp_path / "unused", failure))
    with pytest.raises(CheckpointNotFoundError) as caught:
        resolve_checkpoint(REPO)
    message = str(caught.value)
    assert_one_line(message)
    assert "could not be downloaded (ConnectionError: no route to host)" in message
    assert "second line" not in message
    assert HAND_DOWNLOAD in message


def test_allow_download_false_never_downloads(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    fake = FakeSnapshotDownload(tmp_path / "unused")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(CheckpointNotFoundError, match="allow_download=False"):
        resolve_checkpoint(REPO, allow_download=False)
    assert fake.downloads() == []


@pytest.mark.parametrize("name", ["nonexistent/dir/deep", "./missing", "~/x", "/abs/missing", "../x", "plain"])
def test_neither_path_nor_repo_id(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointNotFoundError) as caught:
        resolve_checkpoint(name)
    message = str(caught.value)
    assert message == (
        f"checkpoint {name!r} does not exist (not a directory, and not a Hugging Face repo id like {REPO})"
    )


def test_regular_file_is_not_a_directory(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(CheckpointNotFoundError, match="is not a directory") as caught:
        resolve_checkpoint(weights)
    assert str(weights) in str(caught.value)


def test_module_imports_only_the_standard_library():
    code = "import sys, data_specs.checkpoint_dir; print('huggingface_hub' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --- reading a checkpoint's files -------------------------------------------------------------------------------


def test_only_regular_files_are_opened(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "folder").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "absent")
    for name, problem in (
        ("fifo", r"is not a regular file \(a FIFO\)"),
        ("zero", r"is not a regular file \(a character device\)"),
        ("folder", r"is not a regular file \(a directory\)"),
        ("loop", r"cannot be read \(Too many levels of symbolic links\)"),
        ("dangling", "is missing"),
        ("absent", "is missing"),
    ):
        for call in (open_checkpoint_file, read_checkpoint_file):
            with pytest.raises(CheckpointFileError, match=f"{name}' {problem}") as caught:
                call(tmp_path / name)
            assert_one_line(str(caught.value))
    assert read_json_file(tmp_path, "dangling") is None and read_json_file(tmp_path, "absent") is None
    with pytest.raises(CheckpointFileError, match="a FIFO"):
        read_json_file(tmp_path, "fifo")


def test_whole_files_are_read_up_to_a_bound(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"{}" + b" " * 98)
    assert read_checkpoint_file(path, limit=100) == b"{}" + b" " * 98
    with pytest.raises(CheckpointFileError, match=r"config.json' is 100 bytes; at most 99 are read from it"):
        read_checkpoint_file(path, limit=99)
    with open(path, "r+b") as fp:
        fp.truncate(MAX_JSON_BYTES + 1)  # sparse
    with pytest.raises(CheckpointFileError, match=f"is {MAX_JSON_BYTES + 1} bytes; at most {MAX_JSON_BYTES}"):
        read_json_file(tmp_path, "config.json")
    path.write_text("[" * 50_000 + "]" * 50_000)  # deeper than the JSON parser's recursion
    with pytest.raises(CheckpointFileError, match="is not valid JSON"):
        read_json_file(tmp_path, "config.json")


def test_a_file_that_grows_past_its_stated_size_is_cut_at_the_bound(tmp_path, monkeypatch):
    """st_size can understate (/proc files say 0): the read itself stops one byte past the bound."""
    path = tmp_path / "config.json"
    path.write_bytes(b"x" * 200)
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: os.stat_result((*real_fstat(fd)[:6], 0, *real_fstat(fd)[7:])))
    with pytest.raises(CheckpointFileError, match="is more than 100 bytes; at most 100 are read"):
        read_checkpoint_file(path, limit=100)


def safetensors_bytes(entries: dict, data: bytes, *, header: bytes | None = None) -> bytes:
    raw = json.dumps(entries).encode() if header is None else header
    return len(raw).to_bytes(8, "little") + raw + data


def test_a_sound_safetensors_header_is_returned_without_its_metadata(tmp_path):
    path = tmp_path / "model.safetensors"
    entries = {
        "__metadata__": {"format": "pt"},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [2, 10]},
        "a": {"dtype": "BF16", "shape": [], "data_offsets": [0, 2]},
        "empty": {"dtype": "I64", "shape": [0, 3], "data_offsets": [10, 10]},
    }
    path.write_bytes(safetensors_bytes(entries, b"\0" * 10))
    assert safetensors_header(path) == {k: v for k, v in entries.items() if k != "__metadata__"}


@pytest.mark.parametrize(
    ("entries", "data", "message"),
    [
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            4,
            "declares 8 bytes of data, the file holds 4",
        ),
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
            12,
            "declares 8 bytes of data, the file holds 12",
        ),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8, "tensor 'a' has a bad header entry"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12, "tensor 'a' has a bad header entry"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},  # overlaps a
            },
            12,
            "tensor 'b' has a bad header entry",
        ),
        ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, 8, "tensor 'a' has a bad header entry"),
        ({"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, 1, "tensor 'a' has a bad header entry"),
        ({"a": [1, 2]}, 0, "tensor 'a' has a bad header entry"),
    ],
)
def test_a_safetensors_header_must_tile_the_data_exactly(tmp_path, entries, data, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes(entries, b"\0" * data))
    with pytest.raises(CheckpointFileError, match=message) as caught:
        safetensors_header(path)
    assert f"{str(path)!r}" in str(caught.value)
    assert_one_line(str(caught.value))


def test_a_safetensors_header_length_must_fit_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    for content, message in (
        (b"\x02\x00", r"not a safetensors file \(2 bytes in all\)"),
        ((10**9).to_bytes(8, "little") + b"{}", r"header length 1000000000, file size 10"),
        ((0).to_bytes(8, "little"), "header length 0"),
        (safetensors_bytes({}, b"", header=b"{]"), "its header is not JSON"),
        (safetensors_bytes({}, b"", header=b"[{}]"), "its header is not an object"),
    ):
        path.write_bytes(content)
        with pytest.raises(CheckpointFileError, match=message):
            safetensors_header(path)


def test_weight_files_are_the_index_names_inside_the_folder(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    with pytest.raises(CheckpointFileError, match="has neither model.safetensors nor model.safetensors.index.json"):
        weight_files(folder)
    (folder / "model.safetensors").write_bytes(b"")
    assert weight_files(folder) == [folder / "model.safetensors"]
    (folder / "sub").mkdir()
    for name in ("b.safetensors", "sub/a.safetensors"):
        (folder / name).write_bytes(b"")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "b.safetensors", "y": "sub/a.safetensors", "z": "b.safetensors"}}))
    assert weight_files(folder) == [folder / "b.safetensors", folder / "sub" / "a.safetensors"]
    (tmp_path / "outside.safetensors").write_bytes(b"")
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    (folder / "inner.safetensors").symlink_to("b.safetensors")
    for name, message in (
        ("../outside.safetensors", "not a file inside the checkpoint folder"),
        (str(tmp_path / "outside.safetensors"), "not a file inside the checkpoint folder"),
        ("link.safetensors", "is a symlink out of the checkpoint folder"),
        ("missing.safetensors", r"missing.safetensors' \(listed by model.safetensors.index.json\) is missing"),
    ):
        index.write_text(json.dumps({"weight_map": {"x": name}}))
        with pytest.raises(CheckpointFileError, match=message):
            weight_files(folder)
    index.write_text(json.dumps({"weight_map": {"x": "inner.safetensors"}}))
    assert weight_files(folder) == [folder / "inner.safetensors"]  # a link that stays inside is fine
