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


# ------------------------------------------------------------------------------------------ the stage loop
class Crash(Exception):
    pass


def _stage(path, max_steps: int, crash_at: int | None = None, seed: int = 0, **kw) -> training.Stage:
    """A tiny linear regression stage whose batch depends only on the step (so a resume sees the same data)."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    goal = torch.arange(12.0).view(3, 4) / 10

    def start(step: int):
        def step_fn(step: int, progress: float):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(step))
            return (model(x) - x @ goal.T).pow(2).mean(), None
        return step_fn

    def watch(state, loss, aux, progress, clock):
        state["seen"].append(state["step"])
        if state["step"] == crash_at:
            raise Crash
        return None

    return training.Stage("tiny", model, training.adamw(model.parameters(), 0.05, betas=(0.9, 0.95), weight_decay=0.1),
                          start, training.Schedule(0.05, warmup_steps=2), seconds=1e6, checkpoint=path,
                          max_steps=max_steps, watch=watch, state={"seen": []}, every=0.0, **kw)


def test_a_resumed_stage_ends_where_an_uninterrupted_one_does(tmp_path):
    whole = _stage(tmp_path / "whole.ckpt", max_steps=6)
    state = training.train_stage(whole)
    assert state["step"] == 6 and state["seen"] == [1, 2, 3, 4, 5, 6]
    # 1. A run that crashes during step 4 (its last checkpoint: after step 3), then a fresh process resumes it
    #    with other initial weights: same weights, optimizer moments and step count as the uninterrupted run.
    with pytest.raises(Crash):
        training.train_stage(_stage(tmp_path / "cut.ckpt", max_steps=6, crash_at=4))
    resumed = _stage(tmp_path / "cut.ckpt", max_steps=6, seed=1)
    state = training.train_stage(resumed)
    assert state["step"] == 6 and state["seen"] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    moments = [s["exp_avg"] for s in whole.opt.state_dict()["state"].values()]
    assert all(torch.equal(s["exp_avg"], m) for s, m in zip(resumed.opt.state_dict()["state"].values(), moments))
    # 2. Negative control: without the checkpoint the other initial weights give other final weights.
    fresh = _stage(tmp_path / "none.ckpt", max_steps=6, seed=1, resume=False)
    training.train_stage(fresh)
    assert not torch.equal(whole.model.weight, fresh.model.weight)


def test_a_done_stage_only_reloads_and_another_key_starts_afresh(tmp_path):
    first = _stage(tmp_path / "s.ckpt", max_steps=3, mark_done=True, key={"size": 1})
    training.train_stage(first)
    assert "opt" not in torch.load(tmp_path / "s.ckpt", weights_only=True)["tensors"]  # done: no optimizer kept
    again = _stage(tmp_path / "s.ckpt", max_steps=3, seed=1, mark_done=True, key={"size": 1})
    state = training.train_stage(again)
    assert state["seen"] == [1, 2, 3] and torch.equal(again.model.weight, first.model.weight)
    other = _stage(tmp_path / "s.ckpt", max_steps=3, seed=1, mark_done=True, key={"size": 2})
    assert training.train_stage(other)["seen"] == [1, 2, 3] and not torch.equal(other.model.weight, first.model.weight)


def test_best_weights_come_back_at_the_end(tmp_path):
    best = training.Best(dtype=torch.float16)
    stage = _stage(tmp_path / "b.ckpt", max_steps=4, best=best)
    kept = {}

    def finish(state, clock):
        best.offer(-1.0, stage.model)  # pretend the weights after step 4 scored best ...
        kept.update({k: v.clone() for k, v in stage.model.state_dict().items()})
        with torch.no_grad():
            stage.model.weight.add_(1.0)  # ... then move away from them

    stage.finish = finish
    state = training.train_stage(stage)
    assert state["best_val"] == -1.0
    assert torch.allclose(stage.model.weight, kept["weight"], atol=1e-3)  # the fp16 copy of the best
    with pytest.raises(ValueError, match="total must be one of"):
        training.Stage("x", stage.model, stage.opt, stage.start, stage.schedule, 1.0, total="closed")


# ------------------------------------------------------------------------------------------ KL, cards
def test_kl_loss_is_the_mean_kl_of_the_positions():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    p, q = teacher.softmax(-1), student.softmax(-1)
    direct = (p * (p / q).log()).sum(-1)                                      # [2, 5]
    assert training.kl_loss(teacher, student).item() == pytest.approx(direct.mean().item(), rel=1e-5)
    mask = torch.tensor([[1.0, 1, 0, 0, 1], [0, 1, 1, 0, 0]])
    assert training.kl_loss(teacher, student, mask).item() == pytest.approx(direct[mask.bool()].mean().item(), rel=1e-5)
    assert training.kl_loss(teacher, teacher).abs().item() < 1e-6 < training.kl_loss(teacher, student).item()
    assert training.kl_loss(teacher, student).item() != pytest.approx(training.kl_loss(student, teacher).item())


def test_card_has_front_matter_title_and_sections(tmp_path):
    text = training.card("mmspec zoo: x", ["intro"], [("Model", ["- a"]), ("Scores", training.card_table(["m", "v"], [["loss", 1.5]]))],
                         {"library_name": "mmspec"})
    assert text == ("---\nlibrary_name: mmspec\n---\n\n# mmspec zoo: x\n\nintro\n\n## Model\n\n- a\n\n"
                    "## Scores\n\n| m | v |\n|---|---|\n| loss | 1.5 |\n")
    assert training.write_card(tmp_path, text).read_text() == text


def test_recipes_write_to_the_working_directory_by_default():
    """Every recipe's default output (and the speech data) is a relative folder, never inside the package."""
    from pathlib import Path

    from mmspec.image import recipe as image_recipe
    from mmspec.speech import recipe as speech_recipe
    from mmspec.text import recipe as text_recipe

    text_args = [text_recipe.cli.build_parser().parse_args([cmd]) for cmd in ("train", "distill", "evaluate")]
    speech = speech_recipe.cli.build_parser()
    defaults = [a.out for a in text_args] + [image_recipe.DEFAULT_OUT, speech_recipe.DEFAULT_DATA,
                                            speech.parse_args(["train"]).out, speech.parse_args(["evaluate"]).zoo,
                                            speech.parse_args(["distill"]).out]
    assert {str(d) for d in defaults} == {"zoo-out/text", "zoo-out/image", "zoo-out/speech", ".gpu/speech"}
    assert not any(Path(d).is_absolute() for d in defaults)  # relative: resolved against the working directory
    shipped = Path(speech_recipe.__file__).resolve().parent.parent / "zoo"
    assert Path(speech.parse_args(["distill"]).zoo).resolve() == shipped  # the target it reads, not written
