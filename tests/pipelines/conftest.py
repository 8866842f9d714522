"""Fixtures the pipelines tests share, built once and only read: the small sample of ``gemma4 sample-data --rows 5
--corrupt``, its preprocessed output, the tiny checkpoint matched to its toy tokenizer, the sample the infer jobs
run on, and a local Ray (plain helpers: tests/pipelines/helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory):
    """(sample directory, manifest, tokenizer directory) of ``gemma4 sample-data --rows 5 --corrupt``. Input rows:
    ex0000 (text), ex0001 (image), ex0002 (audio), bad-image, ex0003 (image + audio), ex0004 (a 4-frame video,
    no image), then the other 6 broken lines."""
    from pipelines.sample_data import write_sample_dataset

    directory = tmp_path_factory.mktemp("small-sample")
    manifest, tokenizer = write_sample_dataset(directory, rows=5, corrupt=True)
    return directory, manifest, tokenizer


@pytest.fixture(scope="session")
def small_output(small_sample):
    """(sample directory, output directory) of :func:`small_sample` preprocessed in shards of 3 rows: shard 0 has
    no errors and shards 2 and 3 have no examples."""
    from pipelines.preprocess_job import PreprocessSettings, run_preprocess

    directory, manifest, tokenizer = small_sample
    out = directory / "out"
    settings = PreprocessSettings(tokenizer=str(tokenizer), rows_per_shard=3)
    run_preprocess(manifest, out, settings, workers=1, progress=False)
    return directory, out


@pytest.fixture(scope="session")
def sample_checkpoint(small_sample, tmp_path_factory):
    """The tiny random checkpoint of ``gemma4 sample-data`` (tiny-e2b, published layout) matched to
    :func:`small_sample`'s toy tokenizer."""
    from pipelines.sample_data import write_sample_checkpoint

    return write_sample_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint", small_sample[2])


@pytest.fixture(scope="session")
def infer_sample(tmp_path_factory):
    """(manifest, checkpoint) of ``gemma4 sample-data --rows 6 --corrupt``: text, image, audio, video rows and 7
    broken ones, with the tiny checkpoint matched to the toy tokenizer."""
    from pipelines.sample_data import write_sample_checkpoint, write_sample_dataset

    directory = tmp_path_factory.mktemp("infer-sample")
    manifest, tokenizer = write_sample_dataset(directory, rows=6, corrupt=True)
    return manifest, write_sample_checkpoint(directory / "checkpoint", tokenizer)


@pytest.fixture(scope="package")
def ray_instance():
    """One local Ray for the pipelines tests (starting one takes seconds); the engines use it and leave it
    running. Skips the test where Ray (the ``ray`` extra) is not installed."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
