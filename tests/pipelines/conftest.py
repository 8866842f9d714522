"""Fixtures the pipelines tests share: one small preprocessed sample."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_output(tmp_path_factory):
    """(sample directory, output directory) of ``gemma4 sample-data --rows 5 --corrupt`` preprocessed in shards
    of 3 rows. Input rows: ex0000 (text), ex0001 (image), ex0002 (audio), bad-image, ex0003 (image + audio),
    ex0004 (a 4-frame video, no image), then the other 6 broken lines. So shard 0 has no errors and shards 2
    and 3 have no examples."""
    from pipelines.preprocess_job import PreprocessSettings, run_preprocess
    from pipelines.sample_data import write_sample_dataset

    directory = tmp_path_factory.mktemp("small-sample")
    manifest, tokenizer = write_sample_dataset(directory, rows=5, corrupt=True)
    out = directory / "out"
    settings = PreprocessSettings(tokenizer=str(tokenizer), rows_per_shard=3)
    run_preprocess(manifest, out, settings, workers=1, progress=False)
    return directory, out
