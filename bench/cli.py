"""The ``gemma4 bench`` commands: each benchmark's name, help, options and handler, registered into the ``gemma4``
parser by :func:`register`.

The benchmark modules import torch and, for the reference, transformers (the test extra): a handler imports its
module when it runs, never before, and a benchmark's options are added only when its command is parsed
(``pipelines.cli.common.Commands``), so ``bench checkpoint``'s options, which its module defines, import it then.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NamedTuple

from pipelines.cli.common import budget, positive

__all__ = ["BENCHMARKS", "register"]


class Benchmark(NamedTuple):
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def register(subparsers) -> None:
    """Add every benchmark to ``subparsers`` (a ``pipelines.cli.common.Commands``)."""
    for benchmark in BENCHMARKS:
        p = subparsers.add_parser(benchmark.name, help=benchmark.help, arguments=benchmark.arguments)
        p.set_defaults(func=benchmark.run)


def _images_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", type=budget, action="append", help="budget to measure (default 280 and 1120)")
    p.add_argument("--count", type=positive, default=48, help="images in the set")
    p.add_argument("--repeat", type=positive, default=3, help="timed passes; the best counts")
    p.add_argument("--workers", type=positive, default=None, help="worker processes (default: CPU count)")
    p.add_argument("--seed", type=int, default=0)


def run_images(args: argparse.Namespace) -> int:
    from bench import bench_images

    bench_images.run(
        args.budget or (280, 1120), count=args.count, repeat=args.repeat, workers=args.workers, seed=args.seed
    )
    return 0


def _audio_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=positive, default=32, help="clips in the set")
    p.add_argument(
        "--long-minutes", type=float, nargs="*", default=[5, 20], help="long recordings, minutes (default 5 20)"
    )
    p.add_argument("--repeat", type=positive, default=3, help="timed passes; the best counts")
    p.add_argument("--threads", type=positive, default=None, help="threads for the batched rows (default: CPU count)")
    p.add_argument("--seed", type=int, default=0)


def run_audio(args: argparse.Namespace) -> int:
    from bench import bench_audio

    bench_audio.run(
        count=args.count, long_minutes=args.long_minutes, repeat=args.repeat, cores=args.threads, seed=args.seed
    )
    return 0


def _preprocess_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=positive, default=2000, help="rows in the generated dataset")
    p.add_argument("--workers", type=positive, default=None, help="worker processes (default: CPU count)")
    p.add_argument("--seed", type=int, default=0)


def run_preprocess(args: argparse.Namespace) -> int:
    from bench import bench_preprocess

    bench_preprocess.run(rows=args.rows, workers=args.workers, seed=args.seed)
    return 0


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=positive, action="append", help="prompt length (repeatable; default 512 and 2048)")
    p.add_argument("--repeat", type=positive, default=3, help="timed passes; the best counts")
    p.add_argument("--rounds", type=positive, default=2, help="processes per engine; the best counts")
    p.add_argument("--prefill-only", action="store_true", help="skip the informational all-logits lines")
    p.add_argument(
        "--size",
        choices=("100m", "tiny-e2b"),
        default="100m",
        help="the decoder measured: the ~100 M-parameter bench model, or the tiny-e2b preset's (a smoke run in "
        "seconds: its figures mean little)",
    )


def run_model(args: argparse.Namespace) -> int:
    from bench import bench_model

    config = None  # bench_model's own
    if args.size == "tiny-e2b":
        from model.config import preset

        config = preset("tiny-e2b").text
    bench_model.run(
        args.tokens or (512, 2048),
        repeat=args.repeat,
        all_logits=not args.prefill_only,
        config=config,
        rounds=args.rounds,
    )
    return 0


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="the device mode: random E2B- and 31B-sized decoders built on this device, prefill and decode tok/s "
        "and peak memory (default: the CPU mode, a ~110 M float32 checkpoint)",
    )
    p.add_argument(
        "--size",
        choices=("e2b", "31b", "tiny-e2b", "tiny-31b"),
        action="append",
        help="with --device: model size (repeatable; default e2b and 31b)",
    )
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None, help="with --device (default bfloat16)")
    p.add_argument("--batch", type=positive, action="append", help="rows (repeatable; default 1, 8; --device 1, 32)")
    p.add_argument("--prompt", type=positive, default=None, help="prompt tokens (default 256; --device 1024)")
    p.add_argument("--new-tokens", type=positive, default=64, help="new tokens per row")
    p.add_argument("--repeat", type=positive, default=2, help="timed calls per process; the best counts")
    p.add_argument(
        "--rounds", type=positive, default=None, help="processes per engine; the best counts (default 2; not --device)"
    )
    p.add_argument("--no-cuda-graphs", action="store_true", help="with --device cuda: our decode steps eagerly")


def run_generate(args: argparse.Namespace) -> int:
    from bench import bench_generate

    try:
        if args.device is None:
            if given := [f"--{n}" for n in ("size", "dtype") if getattr(args, n) is not None]:
                raise ValueError(f"{' and '.join(given)}: only with --device (the device mode)")
            bench_generate.run(
                args.batch or (1, 8),
                prompt=args.prompt or 256,
                new_tokens=args.new_tokens,
                repeat=args.repeat,
                rounds=args.rounds or 2,
            )
            return 0
        if args.rounds is not None:
            raise ValueError("--rounds is for the CPU mode: --device runs one process per engine and size")
        bench_generate.run_device(
            args.device,
            args.size or ("e2b", "31b"),
            args.batch or (1, 32),
            prompt=args.prompt or 1024,
            new_tokens=args.new_tokens,
            repeat=args.repeat,
            dtype=args.dtype or "bfloat16",
            cuda_graphs=not args.no_cuda_graphs,
        )
    except bench_generate.MeasurementError as exc:  # the rows measured and each failure are printed already
        print(f"gemma4 bench generate: {exc}", file=sys.stderr)
        return 1
    return 0


def _prefill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=positive, action="append", help="prompt length (repeatable; default 8192)")
    p.add_argument("--chunk", type=positive, default=None, help="prefill chunk (default: generate's, 1024)")


def run_prefill(args: argparse.Namespace) -> int:
    from bench import bench_prefill

    bench_prefill.run(args.tokens or (8192,), chunk=args.chunk)
    return 0


def _cache_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", action="append", help="only this preset (repeatable; default the four models)")


def run_cache(args: argparse.Namespace) -> int:
    from bench import bench_cache

    bench_cache.run(args.preset or bench_cache.PRESETS_MEASURED)
    return 0


def _encoders_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", choices=("vision", "audio"), default=None, help="one tower only")
    p.add_argument("--threads", type=positive, default=None, help="threads for the audio tower (default: torch's)")
    p.add_argument("--repeat", type=positive, default=3, help="timed passes; the best counts")


def run_encoders(args: argparse.Namespace) -> int:
    from bench import bench_audio_tower, bench_vision_tower

    if args.only in (None, "vision"):
        bench_vision_tower.run(repeat=args.repeat)
    if args.only in (None, "audio"):
        bench_audio_tower.run(repeat=args.repeat, threads=args.threads)
    return 0


def _checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    from bench import bench_checkpoint

    bench_checkpoint.add_arguments(p)


def run_checkpoint(args: argparse.Namespace) -> int:
    from bench import bench_checkpoint

    return bench_checkpoint.run(args)


def _infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=positive, default=24, help="sample rows")
    p.add_argument("--batch-size", type=positive, default=8, help="rows decoded together, both sides")
    p.add_argument("--new-tokens", type=positive, default=32, help="new tokens per row")
    p.add_argument("--workers", type=positive, action="append", help="our job's workers (repeatable; default 1, 2)")


def run_infer(args: argparse.Namespace) -> int:
    from bench import bench_infer

    bench_infer.run(
        rows=args.rows, batch_size=args.batch_size, new_tokens=args.new_tokens, workers=args.workers or (1, 2)
    )
    return 0


BENCHMARKS = (
    Benchmark("images", "image front end against the reference processor", _images_arguments, run_images),
    Benchmark("audio", "audio features against the reference feature extractor", _audio_arguments, run_audio),
    Benchmark(
        "preprocess",
        "the batch job against datasets.map with the reference processor",
        _preprocess_arguments,
        run_preprocess,
    ),
    Benchmark("model", "text decoder prefill against the reference", _model_arguments, run_model),
    Benchmark(
        "generate", "new tokens per second of generate against the reference's", _generate_arguments, run_generate
    ),
    Benchmark(
        "prefill",
        "memory of a long prompt's prefill, chunked and in one pass, and the reference's",
        _prefill_arguments,
        run_prefill,
    ),
    Benchmark(
        "cache", "KV-cache bytes per preset at 8K, 32K and 128K beside the reference's", _cache_arguments, run_cache
    ),
    Benchmark("encoders", "vision and audio towers against the reference", _encoders_arguments, run_encoders),
    Benchmark(
        "checkpoint",
        "a checkpoint at published size (published config, random bf16 weights) against the reference: load, "
        "memory, prefill, decode",
        _checkpoint_arguments,
        run_checkpoint,
    ),
    Benchmark(
        "infer",
        "the infer job (1 and 2 workers) against a plain loop of reference generate",
        _infer_arguments,
        run_infer,
    ),
)
