"""Optional dependencies: is a module importable, which version is installed, and one clear error naming
the extra to install when it is missing. Standard library only."""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from cloudrt.errors import BackendUnavailableError

#: The extra that installs each optional module (pyproject.toml ``[project.optional-dependencies]``).
EXTRAS: dict[str, str] = {
    "torch": "train",
    "safetensors": "train",
    "kornia": "train",
    "onnx": "export",
    "onnxslim": "export",
    "onnxconverter_common": "export",
    "onnxruntime": "cpu",
    "tensorrt": "tensorrt",
    "pystac": "stac",
    "jsonschema": "stac",
    "ray": "ray",
}
#: Distributions that provide one importable module (the first one installed wins).
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "onnxconverter_common": ("onnxconverter-common",),
}


def has_module(name: str) -> bool:
    """True when ``import name`` would find the module (False also when an import hook refuses it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def dist_version(name: str, missing: str = "not installed") -> str:
    """Installed version of the distribution behind module or distribution ``name``, else ``missing``."""
    for dist in _DISTRIBUTIONS.get(name, (name,)):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return missing


def missing_extra_message(module: str, what: str, extra: str | None = None) -> str:
    """One line: ``what`` needs ``module``, which extra installs it (default: :data:`EXTRAS`)."""
    extra = extra or EXTRAS.get(module.split(".")[0])
    fix = f"pip install 'cloudrt[{extra}]'" if extra else f"pip install {module}"
    return f"{what} needs {module}, which is not installed; {fix}."


def require(module: str, what: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`BackendUnavailableError` naming the extra to install."""
    if not has_module(module):
        raise BackendUnavailableError(missing_extra_message(module, what, extra))
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailableError(missing_extra_message(module, what, extra)) from e
