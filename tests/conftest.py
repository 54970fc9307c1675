"""Shared fixtures: the real SEN12MS-CR samples, and GPU / TensorRT auto-skip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cloudrt.paths import shared_data_dir


def _has_cuda() -> bool:
    if importlib.util.find_spec("torch") is not None:
        import torch

        return torch.cuda.is_available()
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False


def _has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cuda = _has_cuda()
    trt = _has_tensorrt()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible on this machine")
    skip_trt = pytest.mark.skip(
        reason="needs TensorRT 10+ and a CUDA GPU; " + ("TensorRT is not installed" if not trt else "no GPU")
    )
    for item in items:
        if "tensorrt" in item.keywords and not (trt and cuda):
            item.add_marker(skip_trt)
        elif "gpu" in item.keywords and not cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data (real SEN12MS-CR patches); skips the test if it is absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("../shared/data (real SEN12MS-CR samples) not found; set CLOUDRT_SHARED_DATA")
    return d


@pytest.fixture(scope="session")
def samples_dir(shared_data: Path) -> Path:
    return shared_data / "sen12mscr-samples"


@pytest.fixture(scope="module")
def one_torch_thread():
    """kornia/torch on a busy 2-core box: 2 intra-op threads made SSIM ~50x slower than 1 (measured)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
