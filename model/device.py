"""Which device a model runs on, and how much memory that device has free: the checks a job makes before it starts.

``resolve_device("auto")`` is CUDA when torch sees a GPU, else the CPU (as vLLM and transformers' pipelines pick
by default). An explicit name is parsed by torch and must be there: ``cuda`` without a CUDA build or device,
``cuda:3`` on a machine with two GPUs, or a word torch does not know (``gpu``) is a :class:`DeviceError` naming
the input and what this machine has, before anything is loaded. ``cuda`` means the current CUDA device
(``cuda:0`` unless ``CUDA_VISIBLE_DEVICES``/``torch.cuda.set_device`` say otherwise), written out with its index
so a job's record names it.

``free_memory`` is what a load may use: on CUDA the driver's free bytes (``torch.cuda.mem_get_info``), on the CPU
``MemAvailable`` of ``/proc/meminfo`` (free memory plus reclaimable page cache, the kernel's own estimate), None
where neither can be read.
"""

from __future__ import annotations

import torch

__all__ = [
    "DeviceError",
    "NotEnoughMemoryError",
    "check_memory",
    "describe_devices",
    "free_memory",
    "human_bytes",
    "resolve_device",
]


class DeviceError(ValueError):
    """A device name that is not a device of this machine."""


class NotEnoughMemoryError(ValueError):
    """A model's weights and KV cache would not fit the device's free memory (said before anything is loaded)."""


def describe_devices() -> str:
    """What this machine offers, for error messages: ``cpu`` and the CUDA devices torch sees."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return ", ".join(names)


def resolve_device(name: str | torch.device) -> torch.device:
    """``name`` as a device of this machine: ``auto`` is ``cuda:N`` (the current CUDA device) where torch sees a
    GPU, else ``cpu``; anything else must parse and be present (:class:`DeviceError` otherwise)."""
    if isinstance(name, str) and name.strip().lower() == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(
            f"device {name!r} is not a device name (use auto, cpu, cuda or cuda:N); this machine has: "
            f"{describe_devices()}"
        ) from None
    if device.type == "cpu" or device.type == "meta":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r}: torch sees no CUDA device here; this machine has: {describe_devices()}"
            )
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r}: there is no CUDA device {index} ({torch.cuda.device_count()} visible); this "
                f"machine has: {describe_devices()}"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return device
    module = getattr(torch, device.type, None)
    if module is not None and getattr(module, "is_available", lambda: False)():
        return device
    raise DeviceError(f"device {name!r} is not available here; this machine has: {describe_devices()}")


def free_memory(device: torch.device) -> int | None:
    """Bytes a load on ``device`` may use now (see the module docstring), or None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as fp:
                for line in fp:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def human_bytes(count: int) -> str:
    """Bytes as people read them: ``9.3 GB``, ``12.4 MB``."""
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


def check_memory(info, device: torch.device, slots: int, context: int, advice: str) -> None:
    """Refuse (:class:`NotEnoughMemoryError`, one line with the figures and ``advice``) a load whose weights
    (``info``: a ``model.checkpoint.CheckpointInfo``) and KV cache of ``slots`` rows of ``context`` tokens exceed
    the device's free memory; nothing is refused where the free memory cannot be read."""
    free = free_memory(device)
    cache = info.cache_bytes(slots, context)
    need = info.weight_bytes + cache
    if free is not None and need > free:
        raise NotEnoughMemoryError(
            f"not enough memory on {device}: {info.name} needs {human_bytes(info.weight_bytes)} of weights "
            f"({str(info.dtype).removeprefix('torch.')}) + {human_bytes(cache)} of KV cache ({slots} slots × "
            f"{context} tokens) = {human_bytes(need)}, and {human_bytes(free)} are free; {advice}"
        )
