"""Ray batch runner on a local 2-CPU cluster: resumable, per-pair failures, one state load per worker,
outputs identical to the serial run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from cloudrt.distributed import Job, run_jobs
from cloudrt.errors import BackendUnavailableError, InputError


def _make_state(log_dir: str):
    def make():
        # Stands for loading the model: record which process did it.
        with open(Path(log_dir, f"load-{os.getpid()}"), "a") as f:
            f.write("load\n")
        return {"scale": 3}
    return make


def _process(state, job: Job):
    if job.args.get("broken"):
        raise InputError(f"optical (S2) file {job.name} is truncated; re-download it.")
    x = np.arange(64, dtype=np.float32).reshape(8, 8) * state["scale"] + job.args["seed"]
    tmp = Path(str(job.output) + ".tmp")
    np.save(tmp, x)
    os.replace(str(tmp) + ".npy", job.output)
    return {"pid": os.getpid()}


def _jobs(out: Path, n: int = 6) -> list[Job]:
    return [Job(f"p{i}", out / f"p{i}.npy", {"seed": i, "broken": i == 2}) for i in range(n)]


def test_without_ray_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'cloudrt\[ray\]'"):
        run_jobs(_jobs(tmp_path), _process, _make_state(str(tmp_path)))


def test_all_done_needs_no_ray(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    jobs = _jobs(tmp_path, 2)
    for j in jobs:
        j.output.touch()
    rep = run_jobs(jobs, _process, _make_state(str(tmp_path)))
    assert rep.skipped == ["p0", "p1"] and rep.results == []


def test_is_done_decides_what_a_resumed_batch_skips(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    jobs = _jobs(tmp_path, 2)
    for j in jobs:
        j.output.touch()
    rep = run_jobs(jobs, _process, _make_state(str(tmp_path)), is_done=lambda j: True)
    assert rep.skipped == ["p0", "p1"]
    # p1's output exists but the caller's rule (e.g. its STAC Item is missing) says it is not done: it runs
    with pytest.raises(BackendUnavailableError):
        run_jobs(jobs, _process, _make_state(str(tmp_path)), is_done=lambda j: j.name == "p0")


def test_ray_batch_on_local_two_cpu_cluster(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'cloudrt[ray]')")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/
    serial_dir, ray_dir, logs = tmp_path / "serial", tmp_path / "ray", tmp_path / "logs"
    for d in (serial_dir, ray_dir, logs):
        d.mkdir()
    state = {"scale": 3}  # what make_state returns
    for j in _jobs(serial_dir):
        if not j.args["broken"]:
            _process(state, j)
    jobs = _jobs(ray_dir)
    np.save(ray_dir / "p5.npy", np.zeros(1))  # already done: resumed, not redone
    seen = []
    rep = run_jobs(jobs, _process, _make_state(str(logs)), num_cpus=2, on_result=seen.append)
    assert rep.skipped == ["p5"] and rep.total == 6
    assert [r.name for r in rep.failed] == ["p2"] and "truncated" in rep.failed[0].message
    assert sorted(r.name for r in rep.done) == ["p0", "p1", "p3", "p4"] and len(seen) == 5
    assert rep.summary() == "cloudrt: wrote 4, skipped 1, failed 1 of 6 pairs"
    for i in (0, 1, 3, 4):
        assert np.array_equal(np.load(ray_dir / f"p{i}.npy"), np.load(serial_dir / f"p{i}.npy"))
    assert not (ray_dir / "p2.npy").exists()
    # One state (model) load per worker process, not per pair.
    loads = sorted(p.name for p in logs.iterdir())
    workers = {f"load-{r.info['pid']}" for r in rep.done}
    assert set(loads) == workers | {f"load-{r.worker.split(':')[1]}" for r in rep.failed}
    assert all((logs / n).read_text() == "load\n" for n in loads), "a worker loaded the state twice"
    assert len(loads) < len(rep.results), "the state must be loaded per worker, not per pair"
