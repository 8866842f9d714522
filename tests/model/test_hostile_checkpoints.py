"""Hostile checkpoint folders (issue 23): each is refused before any model is built or any weight is trusted, with
one line naming the file or the ``config.json`` key, and nothing hangs or fills memory.

Every case is a copy of the tiny checkpoint ``gemma4 sample-data`` writes (``write_sample_checkpoint`` with the
toy tokenizer of ``write_sample_dataset``) broken in one way. Cases that would hang (a FIFO) or read forever
(``/dev/zero``) if a check were lost run in a child process under a timeout and a memory limit, so a regression
fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from data_specs.checkpoint_dir import CheckpointFileError
from model.checkpoint import CheckpointError, inspect_checkpoint, load_config, load_pretrained
from model.config import ConfigError

# --- the tiny checkpoint and its broken copies ------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The sample checkpoint (tiny-e2b: text, vision and audio; float32), with the sample's toy tokenizer."""
    from pipelines.sample_data import SAMPLE_VOCAB, toy_tokenizer_json, write_sample_checkpoint, write_tokenizer_files

    root = tmp_path_factory.mktemp("hostile-checkpoint")
    write_tokenizer_files(root / "tokenizer", toy_tokenizer_json(0, vocab_size=SAMPLE_VOCAB))  # as the sample's
    return write_sample_checkpoint(root / "checkpoint", root / "tokenizer")


def broken(checkpoint, tmp_path, name="broken"):
    target = tmp_path / name
    shutil.copytree(checkpoint, target)
    return target


def refused(error_type, message, call, *args, **kwargs):
    """Assert ``call(*args, **kwargs)`` raises ``error_type`` whose one-line message matches ``message``; return
    the message."""
    with pytest.raises(error_type, match=message) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


def shard(directory, names=("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")):
    """Split the copy's model.safetensors into two shards listed by model.safetensors.index.json."""
    tensors = load_file(directory / "model.safetensors")
    keys = sorted(tensors)
    half = len(keys) // 2
    for name, part in zip(names, (keys[:half], keys[half:]), strict=True):
        save_file({k: tensors[k] for k in part}, directory / name, metadata={"format": "pt"})
    (directory / "model.safetensors").unlink()
    weight_map = {k: names[0] if i < half else names[1] for i, k in enumerate(keys)}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return weight_map


def write_index(directory, weight_map):
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


# --- files that are not files: FIFOs and devices, in a child process --------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_DATA, (2 * 2**30, 2 * 2**30))  # reading /dev/zero ends in MemoryError
    from data_specs.checkpoint_dir import chat_template, generation_defaults
    from model.checkpoint import inspect_checkpoint, load_config, load_pretrained
    from pipelines.infer_job import checkpoint_fingerprint
    from preprocess.processor_config import read_processor_config

    calls = {
        "load_config": load_config,
        "inspect_checkpoint": inspect_checkpoint,
        "load_pretrained": load_pretrained,
        "checkpoint_fingerprint": checkpoint_fingerprint,
        "generation_defaults": generation_defaults,
        "chat_template": chat_template,
        "read_processor_config": read_processor_config,
    }
    for directory, name in json.loads(sys.argv[1]):
        try:
            calls[name](directory)
            outcome = None
        except Exception as error:
            outcome = [type(error).__name__, str(error)]
        print(json.dumps([directory, name, outcome]), flush=True)
    """
)


def run_child(cases: list[tuple[str, str]]) -> dict[tuple[str, str], list | None]:
    """Run each (directory, entry point) in one child process, killed after 120 s; its outcomes by case."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(cases)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],  # the repository root, where the packages are
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"a hostile checkpoint hung the loader; finished before it: {error.stdout}")
    assert done.returncode == 0, done.stderr[-3000:]
    return {(d, n): outcome for d, n, outcome in map(json.loads, done.stdout.splitlines())}


def test_fifos_and_devices_are_refused_by_every_reader_without_being_opened(checkpoint, tmp_path):
    """A FIFO blocks whoever opens it until a writer comes, and /dev/zero never ends: every reader of a
    checkpoint (config, inspection, loading, the job's fingerprint, sampling defaults, chat template, processor
    config) refuses them by name, without opening them."""
    cases, expected = [], {}

    def case(name, make, entry_points, message):
        directory = broken(checkpoint, tmp_path, name)
        make(directory)
        for entry in entry_points:
            cases.append((str(directory), entry))
            expected[(str(directory), entry)] = message

    def fifo(file):
        def make(directory):
            (directory / file).unlink(missing_ok=True)
            os.mkfifo(directory / file)

        return make

    def dev_zero(file):
        def make(directory):
            (directory / file).unlink()
            (directory / file).symlink_to("/dev/zero")

        return make

    everything = ["load_config", "inspect_checkpoint", "load_pretrained", "checkpoint_fingerprint"]
    weights = ["inspect_checkpoint", "load_pretrained", "checkpoint_fingerprint"]
    fifo_file = r"is not a regular file \(a FIFO\)"
    device = r"is not a regular file \(a character device\)"
    case("fifo-config", fifo("config.json"), everything, rf"config.json' {fifo_file}")
    case("fifo-generation", fifo("generation_config.json"), [*everything, "generation_defaults"], fifo_file)
    case("fifo-weights", fifo("model.safetensors"), weights, rf"model.safetensors' \(the weights\) {fifo_file}")
    case("fifo-index", fifo("model.safetensors.index.json"), weights, rf"index.json' {fifo_file}")
    case("fifo-template", fifo("chat_template.jinja"), ["chat_template"], rf"chat_template.jinja' {fifo_file}")
    case(
        "fifo-processor",
        fifo("processor_config.json"),
        ["read_processor_config"],
        rf"processor_config.json' {fifo_file}",
    )
    case("zero-weights", dev_zero("model.safetensors"), weights, rf"model.safetensors' \(the weights\) {device}")
    case("zero-config", dev_zero("config.json"), everything, rf"config.json' {device}")
    case("zero-generation", dev_zero("generation_config.json"), [*everything, "generation_defaults"], device)

    def fifo_shard(directory):
        weight_map = shard(directory)
        os.unlink(directory / weight_map[min(weight_map)])
        os.mkfifo(directory / weight_map[min(weight_map)])

    case("fifo-shard", fifo_shard, weights, rf"00001-of-00002.safetensors' \(listed by .*\) {fifo_file}")
    outcomes = run_child(cases)
    for key, message in expected.items():
        outcome = outcomes[key]
        assert outcome is not None, f"{key} was accepted"
        kind, text = outcome
        assert kind in ("CheckpointError", "CheckpointFileError"), (key, kind, text)
        assert "\n" not in text, text
        assert re.search(message, text), (key, text)


def test_fifos_and_devices_are_refused_in_process(checkpoint, tmp_path):
    """The same refusals where a test can see them quickly (the child-process test above guards against hangs)."""
    from pipelines.infer_job import checkpoint_fingerprint

    fifo = broken(checkpoint, tmp_path, "fifo")
    (fifo / "model.safetensors").unlink()
    os.mkfifo(fifo / "model.safetensors")
    zero = broken(checkpoint, tmp_path, "zero")
    (zero / "model.safetensors").unlink()
    (zero / "model.safetensors").symlink_to("/dev/zero")
    for directory, kind in ((fifo, "a FIFO"), (zero, "a character device")):
        for call in (inspect_checkpoint, load_pretrained):
            refused(
                CheckpointError,
                rf"model.safetensors' \(the weights\) is not a regular file \({kind}\)",
                call,
                directory,
            )
        refused(CheckpointFileError, rf"is not a regular file \({kind}\)", checkpoint_fingerprint, directory)
    directory_instead = broken(checkpoint, tmp_path, "dir")
    (directory_instead / "config.json").unlink()
    (directory_instead / "config.json").mkdir()
    refused(CheckpointError, r"config.json' is not a regular file \(a directory\)", load_config, directory_instead)


# --- damaged safetensors files ---------------------------------------------------------------------------------


def test_a_truncated_safetensors_file_is_named_by_every_reader(checkpoint, tmp_path):
    from pipelines.infer_job import checkpoint_fingerprint

    directory = broken(checkpoint, tmp_path)
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = r"model.safetensors' is not a whole safetensors file: its header declares \d+ bytes of data"
    refused(CheckpointError, message, inspect_checkpoint, directory)
    refused(CheckpointError, message, load_pretrained, directory)
    refused(CheckpointFileError, message, checkpoint_fingerprint, directory)
    weights.write_bytes(data + b"\0" * 16)  # something appended: safetensors refuses it too
    refused(CheckpointError, "not a whole safetensors file", load_pretrained, directory)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:5], r"not a safetensors file \(5 bytes in all\)"),
        (
            lambda data: (2**40).to_bytes(8, "little") + data[8:],
            r"not a safetensors file \(header length 1099511627776",
        ),
        (lambda data: len(data).to_bytes(8, "little") + data[8:], "not a safetensors file .header length"),
        (lambda data: data[:8] + b"[" + data[9:], "its header is not JSON"),
        (lambda data: data[:8] + b"\xff" + data[9:], "its header is not JSON"),
        (lambda data: (2).to_bytes(8, "little") + b"[]", "its header is not an object"),
    ],
)
def test_a_damaged_safetensors_header_is_named(checkpoint, tmp_path, damage, message):
    directory = broken(checkpoint, tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    refused(CheckpointError, f"model.safetensors'.*{message}", load_pretrained, directory)


def rewrite_header(path, change):
    """Rewrite a safetensors file's header through ``change(header)``, keeping its data."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda entry: entry.update(dtype="F4"), "bad header entry"),
        (lambda entry: entry.update(shape=[-1, 2]), "bad header entry"),
        (lambda entry: entry.update(shape=[2.0]), "bad header entry"),
        (lambda entry: entry.update(shape=[10**12, 10**12]), "bad header entry"),  # bytes ≠ shape × dtype
        (lambda entry: entry.update(data_offsets=[0, 10**15]), "bad header entry"),
        (lambda entry: entry.update(data_offsets="0-4"), "bad header entry"),
    ],
)
def test_header_entries_must_describe_their_bytes(checkpoint, tmp_path, change, message):
    directory = broken(checkpoint, tmp_path)

    def damage(header):
        name = next(k for k in sorted(header) if k.endswith("embed_tokens.weight"))
        change(header[name])

    rewrite_header(directory / "model.safetensors", damage)
    refused(CheckpointError, rf"model.safetensors': tensor .* {message}", inspect_checkpoint, directory)
    refused(CheckpointError, message, load_pretrained, directory)


def test_a_file_safetensors_refuses_is_one_checkpoint_error(checkpoint, tmp_path, monkeypatch):
    """Whatever safetensors itself still refuses becomes a CheckpointError naming the file (SafetensorError is
    not a ValueError: it would reach the user as a traceback)."""
    import model.checkpoint as checkpoint_module

    directory = broken(checkpoint, tmp_path)
    monkeypatch.setattr(checkpoint_module, "safetensors_header", lambda path: {})  # our checks skipped
    (directory / "model.safetensors").write_bytes((2**20).to_bytes(8, "little") + b"{}")
    message = r"model.safetensors' is not a readable safetensors file"
    refused(CheckpointError, message, lambda d: load_pretrained(d, dtype="float32"), directory)


# --- the shard index: names confined to the folder --------------------------------------------------------------


def test_sharded_checkpoints_load(checkpoint, tmp_path):
    directory = broken(checkpoint, tmp_path)
    shard(directory)
    loaded = load_pretrained(directory)
    whole = load_pretrained(checkpoint)
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), whole.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize(
    "name", ["../x.safetensors", "/etc/passwd", "sub/../../x.safetensors", "", "a\\..\\b.safetensors"]
)
def test_an_index_naming_a_file_outside_the_folder_is_refused(checkpoint, tmp_path, name):
    directory = broken(checkpoint, tmp_path)
    weight_map = shard(directory)
    (tmp_path / "x.safetensors").write_bytes((directory / weight_map[min(weight_map)]).read_bytes())
    write_index(directory, dict(weight_map, **{min(weight_map): name}))
    message = refused(CheckpointError, "not a file inside the checkpoint folder", inspect_checkpoint, directory)
    assert f"index.json' names {name!r}," in message
    refused(CheckpointError, "not a file inside the checkpoint folder", load_pretrained, directory)


def test_an_index_naming_a_symlink_out_of_the_folder_is_refused(checkpoint, tmp_path):
    directory = broken(checkpoint, tmp_path)
    weight_map = shard(directory)
    outside = tmp_path / "elsewhere.safetensors"
    first = directory / weight_map[min(weight_map)]
    shutil.move(first, outside)
    first.symlink_to(outside)
    refused(
        CheckpointError,
        r"is a symlink out of the checkpoint folder \(to .*elsewhere.safetensors\)",
        load_pretrained,
        directory,
    )
    write_index(directory, {"x": 3})
    refused(CheckpointError, "names 3 as a file", inspect_checkpoint, directory)
    write_index(directory, {})
    refused(CheckpointError, "has no weight_map", inspect_checkpoint, directory)


def test_a_hub_cache_snapshot_may_link_into_its_blobs(checkpoint, tmp_path):
    """The Hugging Face cache keeps every file in ``blobs/`` and links to it from ``snapshots/<revision>/``:
    those links leave the snapshot folder and are accepted."""
    repo = tmp_path / "models--google--tiny"
    snapshot = repo / "snapshots" / ("f" * 40)
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    source = broken(checkpoint, tmp_path, "source")
    shard(source)
    for file in source.iterdir():
        blob = repo / "blobs" / f"blob-{file.name}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    assert inspect_checkpoint(snapshot).name == "tiny"
    load_pretrained(snapshot)


def test_a_symlinked_weights_file_may_live_anywhere(checkpoint, tmp_path):
    """``model.safetensors`` is named by the layout, not read from a file: a link to another disk is the user's
    choice and loads, as long as it leads to a regular file."""
    directory = broken(checkpoint, tmp_path)
    outside = tmp_path / "disk" / "weights.safetensors"
    outside.parent.mkdir()
    shutil.move(directory / "model.safetensors", outside)
    (directory / "model.safetensors").symlink_to(outside)
    load_pretrained(directory)


# --- weights that are not numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_finite_weights_are_refused_naming_the_tensor(checkpoint, tmp_path, bad, dtype):
    directory = broken(checkpoint, tmp_path)
    tensors = load_file(directory / "model.safetensors")
    name = "model.language_model.layers.3.mlp.down_proj.weight"
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    tensors[name][1, 2] = bad
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    shown = "NaN" if bad != bad else "an infinity"
    message = rf"weight 'language_model.layers.3.mlp.down_proj.weight' holds {shown} .*damaged"
    refused(CheckpointError, message, load_pretrained, directory)
    refused(CheckpointError, message, load_pretrained, directory, dtype="float32")


def test_clip_bounds_may_be_infinite_on_their_own_side_only(checkpoint, tmp_path):
    """The towers' clip bounds are ∓inf where a layer does not clip (the sample checkpoint stores them so and
    loads); +inf as a minimum or NaN anywhere is refused."""
    tensors = load_file(checkpoint / "model.safetensors")
    bound = next(k for k in sorted(tensors) if k.endswith("input_min"))
    assert tensors[bound].item() == -float("inf")
    load_pretrained(checkpoint)
    for value, name in ((float("inf"), bound), (float("nan"), bound.replace("input_min", "output_max"))):
        directory = broken(checkpoint, tmp_path, f"bound-{value}")
        changed = dict(tensors, **{name: torch.tensor(value)})
        save_file(changed, directory / "model.safetensors", metadata={"format": "pt"})
        refused(CheckpointError, f"weight '{name.removeprefix('model.')}' holds", load_pretrained, directory)


def test_float8_non_finite_values_are_found_on_their_bits():
    from model.checkpoint import _float8_not_finite

    for dtype, largest, bad in ((torch.float8_e4m3fn, 448.0, "nan"), (torch.float8_e5m2, 57344.0, "inf")):
        finite = [0.5, -2.0, largest, -largest]
        assert not _float8_not_finite(torch.tensor(finite).to(dtype))
        for value in (float(bad), -float(bad)):
            assert _float8_not_finite(torch.tensor([*finite, value]).to(dtype)), (dtype, value)


# --- config.json: every value checked before anything is built --------------------------------------------------


def write_config(directory, change):
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


def text(**values):
    return lambda config: config["text_config"].update(values)


CONFIG_CASES = [
    (text(num_hidden_layers=1_000_000), "text_config.num_hidden_layers is 1000000; at most 1024"),
    (text(hidden_size=64.0), "text_config.hidden_size is 64.0; expected an integer"),
    (text(hidden_size="64"), "text_config.hidden_size is '64'; expected an integer"),
    (text(hidden_size=True), "text_config.hidden_size is True; expected an integer"),
    (text(hidden_size=-64), "text_config.hidden_size is -64; at least 1"),
    (text(hidden_size=10**6), "text_config.hidden_size is 1000000; at most 65536"),
    (text(vocab_size=2**21), "text_config.vocab_size is 2097152; at most 1048576"),
    (text(num_attention_heads=0), "text_config.num_attention_heads is 0; at least 1"),
    (text(num_attention_heads=4096), "text_config.num_attention_heads is 4096; at most 1024"),
    (text(num_key_value_heads=3), r"text_config.num_attention_heads=4 is not a multiple of text_config.num_key_va"),
    (text(intermediate_size=2**30), "text_config.intermediate_size is 1073741824; at most 1048576"),
    (text(sliding_window=-1), "text_config.sliding_window is -1; at least 1"),
    (text(num_kv_shared_layers=-2), "text_config.num_kv_shared_layers is -2; at least 0"),
    (text(rms_norm_eps=-1), "text_config.rms_norm_eps is -1; must be more than 0"),
    (text(rms_norm_eps=0), "text_config.rms_norm_eps is 0; must be more than 0"),
    (text(rms_norm_eps="1e-6"), "text_config.rms_norm_eps is '1e-6'; expected a number"),
    (text(final_logit_softcapping=0.0), "text_config.final_logit_softcapping is 0.0; must be more than 0"),
    (text(use_double_wide_mlp="yes"), "text_config.use_double_wide_mlp is 'yes'; expected true or false"),
    (text(use_bidirectional_attention=1), "text_config.use_bidirectional_attention is 1; expected a string"),
    (
        text(layer_types=["full_attention"] * 5),
        r"text_config.layer_types has 5 entries for 6 layers \(text_config.num_hidden_layers\)",
    ),
    (text(layer_types="full_attention"), "text_config.layer_types is 'full_attention'; expected a list of names"),
    (text(enable_moe_block=True), "text_config.num_experts is None; expected a value"),
    (text(per_layer_config={"x": {}}), r"text_config.per_layer_config\['x'\] is \{\}; not a Gemma 4 full-layer"),
    (text(per_layer_config={"2": {"head_dim": 64.5}}), r"per_layer_config.2.head_dim is 64.5; expected an integer"),
    (
        lambda config: config["text_config"]["rope_parameters"]["full_attention"].update(rope_theta=0),
        "text_config.rope_parameters.full_attention.rope_theta is 0; must be more than 0",
    ),
    (
        lambda config: config["text_config"]["rope_parameters"]["sliding_attention"].update(rope_theta=-1e4),
        "text_config.rope_parameters.sliding_attention.rope_theta is -10000.0; must be more than 0",
    ),
    (
        lambda config: config["text_config"]["rope_parameters"]["full_attention"].update(partial_rotary_factor=2),
        "partial_rotary_factor is 2; at most 1",
    ),
    (text(rope_parameters=[1]), r"text_config.rope_parameters is \[1\]; expected an object"),
    (lambda config: config.update(text_config="big"), "config.json: text_config is 'big'; expected an object"),
    (lambda config: config.update(vision_config=[]), r"config.json: vision_config is \[\]; expected an object"),
    (lambda config: config.update(vision_config=[1]), r"config.json: vision_config is \[1\]; expected an object"),
    (lambda config: config["vision_config"].update(num_hidden_layers=2.5), "vision_config.num_hidden_layers is 2.5"),
    (lambda config: config["vision_config"].update(rms_norm_eps=-1e-6), "vision_config.rms_norm_eps is -1e-06; must"),
    (
        lambda config: config["vision_config"].update(rope_parameters={"rope_theta": 0}),
        "vision_config.rope_parameters.rope_theta is 0; must be more than 0",
    ),
    (lambda config: config["vision_config"].update(patch_size=10**6), "vision_config.patch_size is 1000000; at most"),
    (lambda config: config["audio_config"].update(hidden_size=-1), "audio_config.hidden_size is -1; at least 1"),
    (
        lambda config: config["audio_config"].update(subsampling_conv_channels=[128]),
        r"audio_config.subsampling_conv_channels is \[128\]; expected two channel counts",
    ),
    (lambda config: config["audio_config"].update(rms_norm_eps=0), "audio_config.rms_norm_eps is 0; must be more"),
    (lambda config: config.update(image_token_id=-5), "config.json: image_token_id is -5; at least 0"),
    (lambda config: config.update(image_token_id="5"), "config.json: image_token_id is '5'; expected an integer"),
    (lambda config: config.update(eos_token_id="1"), r"config.json: eos_token_id is '1'; expected a token id"),
    (lambda config: config.update(eos_token_id=[1, None]), r"config.json: eos_token_id is \[1, None\]; expected"),
    (text(pad_token_id=1.5), "config.json: text_config.pad_token_id is 1.5; expected an integer"),
    (text(hidden_size="x" * 10_000), r"text_config.hidden_size is 'xxxx.*…; expected an integer"),  # cut short
]


@pytest.mark.parametrize(("change", "message"), CONFIG_CASES)
def test_a_bad_config_value_is_named_before_any_model_is_built(checkpoint, tmp_path, monkeypatch, change, message):
    import model.checkpoint as checkpoint_module
    import model.gemma4

    directory = broken(checkpoint, tmp_path)
    write_config(directory, change)
    built = []
    monkeypatch.setattr(model.gemma4.Gemma4, "__init__", lambda *a, **k: built.append(1) or pytest.fail("built"))
    monkeypatch.setattr(checkpoint_module, "read_safetensors", lambda *a, **k: pytest.fail("weights read"))
    text_message = refused(ConfigError, message, load_config, directory)
    assert text_message.startswith("config.json"), text_message
    refused(ConfigError, message, inspect_checkpoint, directory)
    refused(ConfigError, message, load_pretrained, directory)
    assert not built


def test_a_bad_generation_config_stop_id_is_named(checkpoint, tmp_path):
    directory = broken(checkpoint, tmp_path)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": ["x"]}))
    refused(
        ConfigError, r"generation_config.json': eos_token_id is \['x'\]; expected a token id", load_config, directory
    )


def test_a_config_of_a_million_layers_builds_nothing(checkpoint, tmp_path, monkeypatch):
    """num_hidden_layers 1000000 (a model that would take hours to build on the meta device): refused on the value
    alone, before the layer types are even expanded."""
    import model.checkpoint as checkpoint_module

    directory = broken(checkpoint, tmp_path)
    write_config(directory, lambda config: config["text_config"].pop("layer_types"))  # to be expanded
    write_config(directory, text(num_hidden_layers=1_000_000))
    monkeypatch.setattr(checkpoint_module, "interleaved_layer_types", lambda *a: pytest.fail("layer types expanded"))
    refused(ConfigError, "config.json: text_config.num_hidden_layers is 1000000; at most 1024", load_config, directory)


def test_json_files_are_read_with_a_size_bound(checkpoint, tmp_path):
    directory = broken(checkpoint, tmp_path)
    with open(directory / "config.json", "r+b") as fp:
        fp.truncate(64 * 2**20)  # sparse: nothing is written, and nothing may be read
    refused(CheckpointError, r"config.json' is 67108864 bytes; at most 16777216 are read", load_config, directory)
    (directory / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(CheckpointError, r"config.json' is not valid JSON", load_config, directory)


def test_integer_weights_are_refused_not_cast(tmp_path):
    from safetensors.torch import load_file, save_file

    from model.checkpoint import CheckpointError, read_safetensors

    source = _sample_checkpoint_for_int_test(tmp_path)
    weights = load_file(source / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name].to(torch.int32)
    save_file(weights, source / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"weight '{name}' is int32, not floating point"):
        read_safetensors(source)


def _sample_checkpoint_for_int_test(tmp_path):
    from pipelines.sample_data import write_sample_checkpoint, write_sample_dataset

    _, tokenizer = write_sample_dataset(tmp_path / "s", rows=1)
    return write_sample_checkpoint(tmp_path / "checkpoint", tokenizer)
