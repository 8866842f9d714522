"""Benchmarks behind ``gemma4 bench …``: our front end and model against the reference, on generated data.

Kept apart from the runtime packages (``preprocess``, ``model``, ``pipelines``): nothing there imports from here.
One module per benchmark (``bench_images``, ``bench_audio``, ``bench_preprocess``, ``bench_model``,
``bench_vision_tower``, ``bench_audio_tower``) and what they share (``benchmarking``).
"""
