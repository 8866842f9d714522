"""Benchmarks behind ``gemma4 bench …``: our front end and model against the reference, on generated data.

Kept apart from the runtime packages (``preprocess``, ``model``, ``pipelines``): nothing there imports from here
but the command line, which registers the ``gemma4 bench`` commands from ``bench.cli`` (each benchmark's name,
help, options and handler) when ``gemma4 bench`` is parsed. One module per benchmark (``bench_images``,
``bench_audio``, ``bench_preprocess``, ``bench_model``, ``bench_generate``, ``bench_prefill``, ``bench_cache``,
``bench_vision_tower``, ``bench_audio_tower``, ``bench_checkpoint``, ``bench_infer``), imported by its handler
only, and what they share (``benchmarking``, ``dispatch_count``).
"""
