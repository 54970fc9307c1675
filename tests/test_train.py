"""Training: a few real steps on the real samples, checkpoints, resume, determinism, safe loading."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from cloudrt.errors import ModelError  # noqa: E402
from cloudrt.model import build  # noqa: E402
from cloudrt.model.checkpoint import load_checkpoint, read_meta, save_checkpoint, weights_sha256  # noqa: E402
from cloudrt.train.loop import TrainConfig, train  # noqa: E402


def _cfg(samples_dir, out, **kw):
    base = dict(data=[str(samples_dir)], out=str(out), preset="carf-tiny", batch=2, crop=64, lr=1e-3,
                split="all", holdout=["oriolac_6553"], max_steps=4, save_every=2, seed=3,
                synthetic_clouds=0.5, overrides={"channels": 16, "heads": 2})
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_safe_checkpoints_that_change_the_model(samples_dir, tmp_path):
    final = train(_cfg(samples_dir, tmp_path / "run"))
    assert final.exists() and final.suffix == ".safetensors"
    meta = read_meta(final)
    assert meta["steps"] == 4 and meta["config"]["preset"] == "carf-tiny"
    assert "oriolac_6553" not in meta["train"]["samples"]
    assert meta["weights_sha256"] == weights_sha256(final)
    model, _ = load_checkpoint(final)
    # IRN's last conv starts at zero; 4 Adam steps must move it (the model learned something)
    assert model.irn.conv2.weight.abs().max() > 0
    for stem in ("last",):
        assert (tmp_path / "run" / f"{stem}.safetensors").exists()
    # optimizer state is tensor-only: it loads with weights_only=True (no unpickling of code)
    state = torch.load(tmp_path / "run" / "last.state.pt", weights_only=True)
    assert state["step"] == 4


def test_training_is_deterministic_and_resume_matches_uninterrupted(samples_dir, tmp_path):
    a = train(_cfg(samples_dir, tmp_path / "a", max_steps=4))
    b = train(_cfg(samples_dir, tmp_path / "b", max_steps=4))
    ma, _ = load_checkpoint(a)
    mb, _ = load_checkpoint(b)
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    # interrupted after 2 steps, then resumed to 4: same weights as the uninterrupted run
    train(_cfg(samples_dir, tmp_path / "c", max_steps=2))
    c = train(_cfg(samples_dir, tmp_path / "c", max_steps=4, resume=True))
    mc, _ = load_checkpoint(c)
    for (k, va), vc in zip(ma.state_dict().items(), mc.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vc, rtol=1e-5, atol=1e-6, msg=k)


def test_ema_weights_match_a_float64_average_of_the_steps_and_survive_resume(samples_dir, tmp_path):
    """final.* of an --ema run is e_1 = w_1, e_k = d e_(k-1) + (1 - d) w_k over the step weights w_k, computed
    here in float64 from runs stopped after 1..4 steps (the constant schedule makes them prefixes of one run)."""
    d = 0.5
    steps = [load_checkpoint(train(_cfg(samples_dir, tmp_path / f"s{k}", max_steps=k)))[0].state_dict()
             for k in range(1, 5)]
    ref = {k: v.double() for k, v in steps[0].items()}
    for w in steps[1:]:
        ref = {k: d * ref[k] + (1 - d) * w[k].double() for k in ref}
    ema = load_checkpoint(train(_cfg(samples_dir, tmp_path / "e", max_steps=4, ema=d)))
    assert ema[1]["weights"] == "ema"
    train(_cfg(samples_dir, tmp_path / "r", max_steps=2, ema=d))  # interrupted, then resumed
    resumed = load_checkpoint(train(_cfg(samples_dir, tmp_path / "r", max_steps=4, ema=d, resume=True)))[0]
    moved = False
    for k, v in ref.items():
        if not v.is_floating_point():
            continue
        torch.testing.assert_close(ema[0].state_dict()[k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(resumed.state_dict()[k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
        moved |= not torch.allclose(v, steps[-1][k].double())
    assert moved, "the average equals the last step: no averaging happened"
    with pytest.raises(Exception, match="--ema 1.5"):
        train(_cfg(samples_dir, tmp_path / "bad", ema=1.5))


def test_checkpoint_roundtrip_and_refusals(tmp_path):
    m = build("carf-tiny")
    torch.nn.init.normal_(m.irn.conv2.weight)
    p = save_checkpoint(m, tmp_path / "m", {"note": "x"})
    m2, meta = load_checkpoint(p)
    assert meta["note"] == "x"
    x, s = torch.rand(1, 13, 32, 32), torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(m.eval()(x, s), m2(x, s))
    # corrupt weights -> clear ModelError, not a crash
    (tmp_path / "m.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="safetensors"):
        load_checkpoint(tmp_path / "m")
    # config that does not match the weights
    p = save_checkpoint(m, tmp_path / "n")
    meta = json.loads((tmp_path / "n.json").read_text())
    meta["config"]["channels"] = 64
    (tmp_path / "n.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not match"):
        load_checkpoint(tmp_path / "n")
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "missing")


def test_cli_train_rejects_missing_data(tmp_path, capsys):
    from cloudrt.cli import main

    rc = main(["train", "--data", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_distributed_data_parallel_two_processes_on_cpu(samples_dir, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU): the documented multi-process command works."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cloudrt.train", "--data", str(samples_dir), "-o", str(out), "--preset", "carf-tiny",
           "--split", "all", "--max-steps", "2", "--batch", "1", "--crop", "64", "--device", "cpu",
           "--override", "channels=16"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = read_meta(out / "final")
    assert meta["train"]["world_size"] == 2 and meta["steps"] == 2
