"""Errors that the CLI turns into one clear line and exit code 2."""

from __future__ import annotations


class CloudrtError(Exception):
    """A user-facing error: the message names the problem and the fix."""

    exit_code = 2


class InputError(CloudrtError):
    """Bad input data (bands, dtype, grids, NaN, nodata, missing file)."""


class ModelError(CloudrtError):
    """A model file that is missing, corrupt, or has the wrong inputs."""


class EngineMismatchError(ModelError):
    """A TensorRT engine built for another GPU or TensorRT version."""


class BackendUnavailableError(CloudrtError):
    """A requested backend (TensorRT, CUDA, torch) is not installed or has no device."""
