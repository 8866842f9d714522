"""The manifest reader: every format, and hostile rows that must become errors naming the row, never crash."""

from __future__ import annotations

import json
import os
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_specs import manifest as manifest_module
from data_specs.manifest import (
    MAX_DEPTH,
    ManifestError,
    MediaOutsideRootError,
    open_manifest,
    resolve_media,
    validate_row,
)

HELLO = [{"role": "user", "content": "hi"}]


def rows_of(path) -> list:
    manifest = open_manifest(path)
    return list(manifest.rows(0, len(manifest)))


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"id": "a", "messages": ' + deep(100_000) + "}", "nested too deeply"),
        ('{"id": ' + "9" * 5000 + ', "messages": []}', "digits"),
        (
            '{"id": "a", "messages": [{"role": "user", "content": [{"type": "image", "image": "x.png", "budget": '
            + "7" * 5000
            + "}]}]}",
            "digits",
        ),
    ],
    ids=["100k-deep", "huge-int-id", "huge-int-budget"],
)
def test_an_unparsable_line_is_an_error_naming_it(tmp_path, line, problem):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "ok", "messages": HELLO}) + "\n" + line + "\n")
    first, second = rows_of(path)
    assert first["id"] == "ok"
    assert isinstance(second, ManifestError)
    assert "row 1: line 2" in str(second) and problem in str(second)
    assert len(str(second)) < 500  # the 5000 digits are not copied into the message


def test_rows_nested_deeper_than_the_limit_are_refused_before_pickling():
    # 500 levels parse fine but overflow the stack when pickled to a worker
    value: object = "x"
    for _ in range(500):
        value = {"k": value}
    row = {"id": "a", "messages": [{"role": "user", "content": "hi", "extra": value}]}
    with pytest.raises(RecursionError):
        pickle.dumps(row)
    with pytest.raises(ManifestError, match=f"row 3 \\(id 'a'\\): nested more than {MAX_DEPTH} levels"):
        validate_row(row, 3)
    ok = {"id": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert validate_row(ok, 0) == ("a", ok["messages"])


@pytest.mark.parametrize("where", ["id", "text", "key"])
def test_strings_that_are_not_unicode_are_refused(where):
    bad = "\ud800"  # a lone surrogate: valid in a JSON escape, refused by UTF-8 encoders (and Parquet)
    row = {"id": bad if where == "id" else "a", "messages": [{"role": "user", "content": "hi"}]}
    if where == "text":
        row["messages"][0]["content"] = f"x{bad}y"
    if where == "key":
        row["messages"][0][bad] = 1
    with pytest.raises(ManifestError, match="lone surrogate") as info:
        validate_row(row, 0)
    info.value.args[0].encode("utf-8")  # the message itself is writable


def test_huge_ids_are_shown_short():
    with pytest.raises(ManifestError) as info:
        validate_row({"id": ["x"] * 10_000, "messages": HELLO}, 0)
    assert len(str(info.value)) < 300


def test_csv_ids_are_read_as_text(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('id,messages\n007,"[{""role"": ""user"", ""content"": ""a""}]"\n7,"[]"\n')
    rows = rows_of(path)
    assert [r["id"] for r in rows] == ["007", "7"]
    assert validate_row(rows[0], 0)[0] == "007"


def test_a_json_file_holding_an_array_is_read_as_rows(tmp_path):
    path = tmp_path / "m.json"
    rows = [{"id": "a", "messages": HELLO}, {"id": "b", "messages": HELLO}]
    path.write_text(json.dumps(rows, indent=2))
    assert rows_of(path) == rows
    lines = tmp_path / "lines.json"  # a .json of JSON lines is still read as lines
    lines.write_text("\n".join(json.dumps(r) for r in rows))
    assert rows_of(lines) == rows
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "a"},')
    with pytest.raises(ManifestError, match="not a valid JSON array"):
        open_manifest(broken)


def test_parquet_manifests_are_streamed(tmp_path, monkeypatch):
    path = tmp_path / "m.parquet"
    ids = [f"r{i}" for i in range(700)]
    pq.write_table(pa.table({"id": ids, "messages": [json.dumps(HELLO)] * 700}), path, row_group_size=300)

    def no_whole_reads(*args, **kwargs):
        raise AssertionError("the whole Parquet manifest was loaded")

    monkeypatch.setattr(pq, "read_table", no_whole_reads)
    manifest = open_manifest(path)
    assert len(manifest) == 700
    # read in shards, in order, as the job does (and a jump back restarts the stream)
    got = [row["id"] for start in range(0, 700, 128) for row in manifest.rows(start, min(700, start + 128))]
    assert got == ids
    assert [row["id"] for row in manifest.rows(5, 7)] == ["r5", "r6"]
    assert [row["id"] for row in manifest.rows(650, 651)] == ["r650"]


def test_an_empty_manifest_has_no_rows(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("\n\n")
    assert len(open_manifest(path)) == 0


def test_a_manifest_that_is_not_a_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "m.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ManifestError, match="not a regular file"):
        open_manifest(fifo)  # never opened: opening a FIFO blocks for ever


def test_media_root_confines_paths(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"")
    (root / "escape.png").symlink_to("/etc/hostname")

    def part(value):
        return [{"role": "user", "content": [{"type": "image", "image": value}]}]

    inside = resolve_media(part("images/a.png"), root, root)
    assert inside[0]["content"][0]["image"] == str(root / "images" / "a.png")
    for value in ("../outside.png", "/etc/passwd", "escape.png", {"path": "/proc/self/environ", "bytes": None}):
        with pytest.raises(MediaOutsideRootError, match="outside the media root"):
            resolve_media(part(value), root, root)
    # without a root, anything goes (the manifest is trusted)
    assert resolve_media(part("/etc/passwd"), root)[0]["content"][0]["image"] == "/etc/passwd"


def test_audio_sampling_rates_are_passed_on_unrounded():
    messages = [
        {"role": "user", "content": [{"type": "audio", "audio": {"array": [0.0] * 4, "sampling_rate": 16000.7}}]}
    ]
    (_, rate) = resolve_media(messages, manifest_module.Path("."))[0]["content"][0]["audio"]
    assert rate == 16000.7  # the audio loader refuses it; int() would have silently made it 16000


def test_openai_parts_resolve_like_ours_and_stay_inside_the_media_root(tmp_path):
    from preprocess.errors import ChatFormatError

    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)

    def part(url, **extra):
        return [{"role": "user", "content": ["skip me", {"type": "image_url", "image_url": {"url": url}, **extra}]}]

    for url in ("file:images/a%20b.png", "images/a b.png", f"file://{root}/images/a%20b.png"):
        resolved = resolve_media(part(url, budget=70), root, root)[0]["content"][1]
        assert resolved == {"type": "image", "image": str(root / "images" / "a b.png"), "budget": 70}
    audio = [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}
    ]
    assert resolve_media(audio, root)[0]["content"][0] == {"type": "audio", "audio": b"RIFF"}
    for url in ("file:///etc/passwd", "file:../outside.png", "../outside.png"):
        with pytest.raises(MediaOutsideRootError, match="outside the media root"):
            resolve_media(part(url), root, root)
    with pytest.raises(ChatFormatError, match=r"messages\[0\]\.content\[1\]: .*never fetched"):
        resolve_media(part("https://example.com/a.png"), root)


def test_media_parts_located_by_url_or_path_resolve_like_ours_and_stay_inside_the_media_root(tmp_path):
    from preprocess.errors import ChatFormatError

    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)

    def part(**located):
        return [
            {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "image", "budget": 70, **located}]}
        ]

    for located in ({"path": "images/a b.png"}, {"url": "file:images/a%20b.png"}, {"url": "images/a b.png"}):
        resolved = resolve_media(part(**located), root, root)[0]["content"][1]
        assert resolved == {"type": "image", "image": str(root / "images" / "a b.png"), "budget": 70}
    for located in ({"path": "../outside.png"}, {"path": "/etc/passwd"}, {"url": "file:///etc/passwd"}):
        with pytest.raises(MediaOutsideRootError, match="outside the media root"):
            resolve_media(part(**located), root, root)
    with pytest.raises(ChatFormatError, match=r"messages\[0\]\.content\[1\]: .*never fetched"):
        resolve_media(part(url="https://example.com/a.png"), root)
    with pytest.raises(ChatFormatError, match=r"messages\[0\]\.content\[1\]: .*gives its data twice"):
        resolve_media(part(image="a.png", path="b.png"), root)


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "tools, expected",
    [
        (None, None),
        ([], None),  # columnar formats write [] for rows without tools: the job's tools apply
        ([WEATHER], [WEATHER]),
        (json.dumps([WEATHER]), [WEATHER]),
        ([{"name": "bare", "parameters": {}}], [{"name": "bare", "parameters": {}}]),
    ],
)
def test_rows_may_carry_tools(tools, expected):
    row = {"id": 7, "messages": json.dumps(HELLO), **({} if tools is None else {"tools": tools})}
    assert manifest_module.read_row(row, 0) == manifest_module.ManifestRow("7", HELLO, expected)
    assert validate_row(row, 0) == ("7", HELLO)  # its callers are unchanged


@pytest.mark.parametrize(
    "tools, problem",
    [
        ("[{", "'tools' is a string but not JSON"),
        ({"name": "x"}, "'tools' must be a list of tool specs, got dict"),
        ("7", "'tools' must be a list of tool specs, got int"),
        ([WEATHER, {"type": "function", "function": {"description": "no name"}}], r"tools\[1\] must be .*'type'"),
        ([{"type": "function", "function": "get_weather"}], r"tools\[0\] must be"),
        ([{"name": "  "}], r"tools\[0\] must be"),
        (["get_weather"], r"tools\[0\] .*got str"),
    ],
)
def test_bad_tools_are_refused_naming_the_row(tools, problem):
    with pytest.raises(ManifestError, match=r"^row 3 \(id 'q'\): " + problem):
        manifest_module.read_row({"id": "q", "messages": HELLO, "tools": tools}, 3)
    with pytest.raises(ManifestError, match=problem):
        validate_row({"id": "q", "messages": HELLO, "tools": tools}, 3)
