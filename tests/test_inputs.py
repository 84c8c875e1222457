"""Bad input through the Python API: every mistake is a ValueError naming the parameter, never a deep
stack trace, a hang or a silently wrong result. Property-based (Hypothesis) over the parameter checks of
``generate``, ``Sampling`` and the drafters, plus the cases a fuzzing pass found."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mmspec
from mmspec import accept
from mmspec.testing import ToyTarget
from mmspec.types import Sampling

PROMPT = torch.tensor([[[0], [3], [1]]])
ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                     st.text(max_size=5), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                                              st.integers(), max_size=2))


def _valid_count(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@settings(max_examples=60, deadline=None)
@given(k=ANYTHING, max_new=ANYTHING)
def test_generate_checks_k_and_max_new_tokens(k, max_new):
    target = ToyTarget(vocab_size=5, seed=1)
    if _valid_count(k, 1) and _valid_count(max_new, 1):
        max_new = min(max_new, 4)
        gen = mmspec.generate(target, mmspec.PromptLookupDrafter(), PROMPT, k=min(k, 8), max_new_tokens=max_new)
        assert int(gen.lengths[0]) == max_new
    else:
        with pytest.raises(ValueError, match="k|max_new_tokens"):
            mmspec.generate(target, mmspec.PromptLookupDrafter(), PROMPT, k=k, max_new_tokens=max_new)


@settings(max_examples=60, deadline=None)
@given(seed=ANYTHING)
def test_generate_checks_the_seed(seed):
    target = ToyTarget(vocab_size=5, seed=1)
    if _valid_count(seed, 0) and seed < 2**63:
        assert mmspec.generate(target, None, PROMPT, max_new_tokens=2, seed=seed).tokens.shape == (1, 2, 1)
    else:
        with pytest.raises(ValueError, match="seed"):
            mmspec.generate(target, None, PROMPT, max_new_tokens=2, seed=seed)


@settings(max_examples=80, deadline=None)
@given(temperature=ANYTHING, top_k=ANYTHING, top_p=ANYTHING)
def test_sampling_checks_its_fields(temperature, top_k, top_p):
    ok_t = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and math.isfinite(temperature) \
        and temperature >= 0
    ok_k = top_k is None or _valid_count(top_k, 1)
    ok_p = top_p is None or (isinstance(top_p, (int, float)) and not isinstance(top_p, bool) and 0 < top_p <= 1)
    if ok_t and ok_k and ok_p:
        Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    else:
        with pytest.raises(ValueError, match="temperature|top_k|top_p"):
            Sampling(temperature=temperature, top_k=top_k, top_p=top_p)


@settings(max_examples=40, deadline=None)
@given(temperature=st.floats(min_value=0, max_value=1e-3) | st.just(1e-45) | st.floats(min_value=50, max_value=1e30))
def test_extreme_temperatures_sample_valid_tokens(temperature):
    """A tiny temperature tends to greedy (never NaN); a huge one to uniform: always valid ids."""
    target = ToyTarget(vocab_size=6, seed=2)
    gen = mmspec.generate(target, None, PROMPT, max_new_tokens=6, rule=accept.speculative,
                          sampling=Sampling(temperature=temperature))
    assert bool(((gen.tokens >= 0) & (gen.tokens < 6)).all())
    if 0 < temperature <= 1e-6:
        assert torch.equal(gen.tokens, mmspec.autoregressive(target, PROMPT, max_new_tokens=6).tokens)


def test_infinite_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=float("inf"))


def test_numpy_integers_are_accepted():
    target = ToyTarget(vocab_size=5, seed=1)
    gen = mmspec.generate(target, mmspec.JacobiDrafter(), PROMPT, k=np.int64(3), max_new_tokens=np.int32(5),
                          seed=np.uint8(4), sampling=Sampling(top_k=np.int64(2)))
    assert int(gen.lengths[0]) == 5


@pytest.mark.parametrize("kwargs, word", [
    (dict(k=True), "k"), (dict(max_new_tokens=False), "max_new_tokens"), (dict(seed=True), "seed"),
    (dict(seed=2**64), "seed"), (dict(rule="greedy"), "rule"), (dict(rule=42), "rule"),
    (dict(sampling={"temperature": 1}), "sampling"),
])
def test_loop_arguments_name_the_parameter(kwargs, word):
    with pytest.raises(ValueError, match=word):
        mmspec.generate(ToyTarget(), None, PROMPT, **{"max_new_tokens": 3, **kwargs})


@pytest.mark.parametrize("target", [None, "zoo:code-target", 3, object()])
def test_a_target_must_be_a_target(target):
    with pytest.raises(ValueError, match="target"):
        mmspec.generate(target, None, PROMPT)


@pytest.mark.parametrize("draft", [None, "zoo:code-draft", object()])
def test_a_draft_model_must_be_a_target(draft):
    with pytest.raises(ValueError, match="draft model"):
        mmspec.ModelDrafter(draft)


def test_drafter_options_are_checked():
    with pytest.raises(ValueError, match="adaptive"):
        mmspec.ModelDrafter(ToyTarget(), adaptive="no")
    with pytest.raises(ValueError, match="confidence"):
        mmspec.ModelDrafter(ToyTarget(), confidence=True)
    with pytest.raises(ValueError, match="pad_id"):
        mmspec.JacobiDrafter(init="pad", pad_id=-3)
    with pytest.raises(ValueError, match="pad_id"):
        mmspec.generate(ToyTarget(vocab_size=5), mmspec.JacobiDrafter(init="pad", pad_id=7), PROMPT, max_new_tokens=4)
    bad_init = lambda seq, n: torch.full((seq.shape[0], n, seq.shape[2]), 99)  # noqa: E731 (ids outside V)
    with pytest.raises(ValueError, match="vocabulary"):
        mmspec.generate(ToyTarget(vocab_size=5), mmspec.JacobiDrafter(init=bad_init), PROMPT, max_new_tokens=4)


def test_a_broken_rules_own_error_surfaces_and_it_is_never_called_lossless():
    def broken(draft, target_logits, sampler, pos):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # a user rule's own error surfaces unchanged
        mmspec.generate(ToyTarget(), None, PROMPT, max_new_tokens=2, rule=broken)
    assert accept.as_rule(broken).lossless is False  # an unknown rule is never labelled lossless


def test_the_target_as_its_own_draft_is_refused():
    target = ToyTarget(vocab_size=5)
    with pytest.raises(ValueError, match="target object itself"):
        mmspec.generate(target, mmspec.ModelDrafter(target), PROMPT, max_new_tokens=4)


def test_two_interleaved_streams_on_one_target_are_refused():
    target = ToyTarget(vocab_size=5, seed=3)
    first = mmspec.stream(target, None, PROMPT, max_new_tokens=6)
    next(first)
    with pytest.raises(ValueError, match="already generating"):
        next(mmspec.stream(target, None, PROMPT, max_new_tokens=6))
    rest = list(first)  # the first stream is intact and finishes
    assert sum(s.frames.shape[1] for s in rest) == 5
    next(mmspec.stream(target, None, PROMPT, max_new_tokens=2))  # free again once it finished


def test_an_abandoned_stream_frees_its_target():
    target = ToyTarget(vocab_size=5, seed=3)
    first = mmspec.stream(target, None, PROMPT, max_new_tokens=6)
    next(first)
    first.close()
    assert mmspec.generate(target, None, PROMPT, max_new_tokens=2).tokens.shape == (1, 2, 1)


def test_generation_save_checks_the_path_first(tmp_path):
    gen = mmspec.generate(ToyTarget(vocab_size=5), None, PROMPT, max_new_tokens=2)
    gen.outputs = ["text one"]
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        gen.save(str(tmp_path / "folder"))
    assert gen.save(str(tmp_path / "new" / "deeper" / "out.txt")) == [str(tmp_path / "new" / "deeper" / "out.txt")]
    assert (tmp_path / "new" / "deeper" / "out.txt").read_text() == "text one"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot create the folder"):
        gen.save(str(blocker / "out.txt"))
    with pytest.raises(ValueError, match="cannot write to '/proc'"):  # writable by permission bits for root
        gen.save("/proc/out.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder", "new"]  # nothing else was written


# -- adapters: prompts, guidance, devices ------------------------------------------------------------

@pytest.mark.parametrize("prompt", [{"def f():": 1}, 5, None, "", "   ", ["ok", ""], ["ok", 3], "bad \ud800 text"])
def test_text_prompts_must_be_text(tiny_models, prompt):
    from mmspec.text import TextTarget

    target = TextTarget.from_pretrained(tiny_models["llama"])
    with pytest.raises(ValueError, match="prompt"):
        mmspec.generate(target, None, prompt, max_new_tokens=2)


@pytest.mark.parametrize("prompt", [{"red ring": 1}, 7, ["red ring", None]])
def test_image_prompts_must_be_class_names(image_zoo, prompt):
    from mmspec.image import ImageTarget

    target = ImageTarget.from_pretrained(str(image_zoo / "shapes"))
    with pytest.raises(ValueError, match="prompt"):
        mmspec.generate(target, None, prompt, max_new_tokens=2)


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), -1.0, True, "3"])
def test_guidance_scale_is_a_finite_number(image_zoo, scale):
    from mmspec.image import ImageTarget

    with pytest.raises(ValueError, match="guidance"):
        ImageTarget.from_pretrained(str(image_zoo / "shapes"), guidance_scale=scale)


def test_image_target_takes_a_torch_dtype(image_zoo):
    from mmspec.image import ImageTarget

    target = ImageTarget.from_pretrained(str(image_zoo / "shapes"), dtype=torch.float32)
    assert next(target.model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("device", ["nosuch", "cuda:99" if torch.cuda.is_available() else "cuda", 3])
def test_device_names_are_checked(tiny_models, device):
    from mmspec.text import TextTarget

    with pytest.raises(ValueError, match="device"):
        TextTarget.from_pretrained(tiny_models["llama"], device=device)


def test_an_unreachable_hub_id_fails_fast_with_a_clear_message(monkeypatch):
    """No network: one short probe instead of the download and its retries."""
    import huggingface_hub
    from transformers import PretrainedConfig

    from mmspec.text import TextTarget

    probes = []

    def unreachable(repo_id, timeout=None):
        probes.append(timeout)
        raise OSError("Name or service not known")

    def download(*args, **kwargs):
        raise AssertionError("the download (with its retries) must not start")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    monkeypatch.setattr(PretrainedConfig, "get_config_dict", download)
    with pytest.raises(ValueError, match="cannot reach the Hugging Face Hub to fetch 'someorg/some-model'"):
        TextTarget.from_pretrained("someorg/some-model")
    assert probes == [10]  # one request with a short timeout
