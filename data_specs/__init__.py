"""Versioned schemas of what goes into and comes out of the pipelines (see README.md here).

One submodule per contract, imported directly (``from data_specs.example import example_schema``):

* ``manifest``: the input manifest of ``gemma4 preprocess`` (``MANIFEST_VERSION``), row validation;
* ``openai_batch``: OpenAI batch files (``vllm run-batch``, the Batch API): request lines in, response lines out;
* ``example``: the Arrow schema of one preprocessed example (``SCHEMA_VERSION``), rows ↔ examples;
* ``errors_table``: the Arrow schema of the errors table;
* ``batch``: the packed batch the front end hands the model (``BATCH_VERSION``);
* ``media``: the media facts both sides share (modality ids, patch size, pooling, mel bins, frames → tokens);
* ``checkpoint_dir``: a checkpoint's place (a directory, or a Hugging Face repo id in the local hub cache) and its
  small files (``generation_config.json``'s sampling, the chat template, JSON files read safely).

This package imports none of them (nor pyarrow or torch): model code imports ``data_specs.batch`` and must not
pay for the Arrow schemas.
"""

__all__: list[str] = []  # the contracts live in the submodules above
