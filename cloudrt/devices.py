"""Device strings, parsed in one place: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (or a bare GPU index ``N``).

``device`` means the same thing everywhere (runtime, export, training, bench): where the work runs.
"""

from __future__ import annotations

from cloudrt.errors import InputError


def parse_device(device: str | int | None, default: str = "auto") -> str:
    """Normalize to ``"auto"``, ``"cpu"`` or ``"cuda:N"``; :class:`InputError` otherwise.

    ``None`` -> ``default``; ``"cuda"``/``"gpu"`` -> ``"cuda:0"``; ``1``/``"1"``/``"gpu:1"`` -> ``"cuda:1"``.
    """
    if device is None:
        device = default
    s = str(device).strip().lower()
    if s in ("auto", "cpu"):
        return s
    if s in ("cuda", "gpu"):
        return "cuda:0"
    idx = s.removeprefix("cuda:").removeprefix("gpu:")
    if idx.isdigit():
        return f"cuda:{int(idx)}"
    raise InputError(f"--device {device!r} is not auto, cpu, cuda or cuda:N; pass --device cpu or cuda:0.")


def device_index(device: str | int | None) -> int:
    """The GPU index of a device (0 for ``None``, ``auto``, ``cpu`` and ``cuda``)."""
    d = parse_device(device)
    return int(d.split(":", 1)[1]) if d.startswith("cuda:") else 0


def is_cuda(device: str | int | None) -> bool:
    """True for ``cuda``/``cuda:N``/a GPU index (not for ``auto``)."""
    return parse_device(device).startswith("cuda:")
