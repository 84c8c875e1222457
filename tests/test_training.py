"""The zoo recipes' shared harness: atomic weights_only checkpoints, resume, the LR schedule, the time budget."""
import math
import time

import pytest
import torch

from mmspec import training


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        training.update(model, opt, model(torch.randn(5, 4)).pow(2).mean())
    return model, opt


def test_checkpoint_round_trip_is_atomic_and_weights_only(tmp_path, monkeypatch):
    model, opt = _model_and_opt()
    path = tmp_path / "stage.ckpt"
    state = {"step": 3, "spent": 1.5, "best": math.inf, "curve": [[1, 0.5], [2, 0.25]], "done": False}
    training.save_checkpoint(path, state, model=model.state_dict(), opt=opt.state_dict(), best={})
    assert path.exists() and not list(tmp_path.glob("*.tmp"))
    # 1. The file loads with weights_only=True (no pickled objects) and gives back state and tensors.
    assert torch.load(path, weights_only=True)["format"] == training.CHECKPOINT_FORMAT
    loaded, tensors = training.load_checkpoint(path)
    assert loaded == state and tensors["best"] == {}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in tensors["model"].items())
    # 2. State that is not JSON (a tensor) is refused instead of pickled.
    with pytest.raises(TypeError):
        training.save_checkpoint(path, {"step": torch.tensor(1)})
    # 3. A crash while writing leaves the previous checkpoint intact.
    monkeypatch.setattr(training.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        training.save_checkpoint(path, {"step": 99})
    assert training.load_checkpoint(path)[0]["step"] == 3
    assert training.load_checkpoint(tmp_path / "missing.ckpt") is None


def test_resume_restores_step_and_optimizer_state(tmp_path):
    model, opt = _model_and_opt()
    training.save_checkpoint(tmp_path / "s.ckpt", {"step": 3}, model=model.state_dict(), opt=opt.state_dict())
    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    state, tensors = training.load_checkpoint(tmp_path / "s.ckpt")
    fresh.load_state_dict(tensors["model"])
    fresh_opt.load_state_dict(tensors["opt"])
    assert state["step"] == 3
    moments = [s["exp_avg"] for s in opt.state_dict()["state"].values()]
    assert all(torch.equal(a["exp_avg"], b) for a, b in zip(fresh_opt.state_dict()["state"].values(), moments))
    # The next step of the resumed pair equals the next step of the original.
    x = torch.randn(5, 4)
    training.update(model, opt, model(x).pow(2).mean())
    training.update(fresh, fresh_opt, fresh(x).pow(2).mean())
    assert torch.allclose(model.weight, fresh.weight)


def test_schedule_warmup_and_floor():
    text = training.Schedule(1.0, warmup=0.03, warmup_min=0.02)
    assert text(0.0) == 0.02 and text(0.015) == pytest.approx(0.5) and text(0.03) == pytest.approx(1.0)
    assert text(1.0) == pytest.approx(0.1) and text(5.0) == pytest.approx(0.1)
    image = training.Schedule(2.0, warmup=0.03, warmup_start=0.1)
    assert image(0.0) == pytest.approx(0.2) and image(1.0) == pytest.approx(0.2)
    steps = training.Schedule(1.0, warmup_steps=100)
    assert steps(0.0, step=0) == pytest.approx(0.01) and steps(0.0, step=99) == pytest.approx(1.0)
    assert steps(0.5, step=500) == pytest.approx(0.1 + 0.9 * 0.5)
    assert all(text(p / 100) >= text((p + 1) / 100) for p in range(3, 100))  # decays monotonically


def test_time_budget_stops_a_loop():
    clock = training.StageClock(time.time() + 0.2, spent=0.2)
    steps = 0
    while clock.running():
        steps += 1
        time.sleep(0.01)
    assert 5 <= steps <= 25 and clock.elapsed() >= 0.4 and clock.progress() >= 0.99
    run = training.Clock(10.0, reserve=2.0, shares={"a": 1.0, "b": 3.0})
    assert run.seconds("a") == pytest.approx(2.0, abs=0.05) and run.seconds("b") == pytest.approx(8.0, abs=0.05)
    assert training.Clock(0.0, shares={"a": 1.0}).seconds("a", floor=1.0) == 1.0


def test_setup_device_seeds_and_hardware_names_the_cpu():
    device = training.setup_device("cpu", seed=3)
    a = torch.rand(2)
    training.setup_device("cpu", seed=3)
    assert device.type == "cpu" and torch.equal(a, torch.rand(2))
    assert "CPU" in training.hardware("cpu")
