"""Speech adapter: greedy equivalence of every method, the delay pattern, exact per-codebook verification,
the lossy relaxed rule's bound, decode hygiene, the modality interface, the CLI and bad input.

Tiny random codec LMs (and a tiny codec) are built from configs and saved as recipe folders, so nothing
here needs the zoo weights or the network.
"""
from __future__ import annotations

import functools
import json
import wave
from collections import Counter

import pytest
import torch

import mmspec
from mmspec.drafters.coupled import CoupledJacobiDrafter
from mmspec.testing import chi2_pvalue
from mmspec import Draft, Sampler, Sampling, accept
from mmspec.speech import Audio, CodecLookupDrafter, SpeechTarget, fit_prior, relaxed, relaxed_rule
from mmspec.speech import api
from mmspec.speech.lm import apply_delay, revert_delay

from builders import C, K, make_speech_folder as make_folder

TEXTS = ["Hello world", "Hi there, how are you"]


@pytest.fixture(scope="module")
def folders(speech_folders):  # tests/builders.py, one copy per session
    return speech_folders


@pytest.fixture(scope="module")
def target(folders):
    return SpeechTarget.from_pretrained(folders["target"])


def methods(folders):
    return {
        "model": lambda: mmspec.ModelDrafter(SpeechTarget.from_pretrained(folders["draft"], load_codec=False)),
        "prompt-lookup": lambda: mmspec.PromptLookupDrafter(),
        "jacobi-random": lambda: mmspec.JacobiDrafter("random"),
        "jacobi-codec-lookup": lambda: mmspec.JacobiDrafter(api.MODALITY.inits["codec-lookup"]),
        "coupled": lambda: CoupledJacobiDrafter("random"),
        "lookahead": lambda: mmspec.LookaheadDrafter(),
        "codec-lookup": lambda: CodecLookupDrafter(),
    }


# -- equivalence ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False], ids=["fast", "eager"])
@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_equivalence_every_method(folders, target, batch, fast):
    """On both forward paths; the two paths' autoregressive outputs agree too."""
    eager = SpeechTarget.from_pretrained(folders["target"], fast=False)
    assert target.forward_path == "fast" and eager.forward_path == "eager"
    prompt = TEXTS[0] if batch == 1 else TEXTS
    base = mmspec.autoregressive(target, prompt, max_new_tokens=40)
    assert torch.equal(base.tokens, mmspec.autoregressive(eager, prompt, max_new_tokens=40).tokens)
    target = target if fast else eager
    assert base.tokens.shape[-1] == K and int(base.lengths.min()) > K
    for name, make in methods(folders).items():
        for k in (1, 4):
            gen = mmspec.generate(target, make(), prompt, max_new_tokens=40, k=k)
            assert torch.equal(gen.tokens, base.tokens), (name, k)
            assert torch.equal(gen.lengths, base.lengths), (name, k)
            assert gen.outputs == base.outputs, (name, k)  # the same audio, sample for sample
            assert gen.stats["steps"] <= base.stats["steps"], (name, k)


def test_twin_draft_is_accepted_everywhere(folders, target):
    twin = SpeechTarget.from_pretrained(folders["target"], load_codec=False)
    base = mmspec.autoregressive(target, TEXTS[1], max_new_tokens=30)
    gen = mmspec.generate(target, mmspec.ModelDrafter(twin), TEXTS[1], max_new_tokens=30, k=4)
    assert torch.equal(gen.tokens, base.tokens)
    assert gen.stats["acceptance_rate"] == 1.0
    assert gen.stats["steps"] < base.stats["steps"] / 2


def test_relaxed_with_beta_zero_is_lossless_and_greedy_stays_exact(folders, target):
    """beta = 0 is speculative sampling: with a deterministic draft it keeps the exact greedy output."""
    base = mmspec.autoregressive(target, TEXTS, max_new_tokens=30)
    gen = mmspec.generate(target, CodecLookupDrafter(), TEXTS, max_new_tokens=30, k=3, rule=relaxed_rule(0.0))
    assert torch.equal(gen.tokens, base.tokens)


def test_rollback_equals_fresh_prefill(folders, target):
    a = torch.tensor([[[1, C, C], [2, 3, C], [4, 5, 6]]])  # [1, 3, K]
    b = torch.tensor([[[7, C, C], [8, 9, C]]])
    target.start(TEXTS[0], 8)
    p0 = target.pos.clone()
    target.forward(a)
    target.keep(p0)
    got = target.forward(b)
    fresh = SpeechTarget.from_pretrained(folders["target"], load_codec=False)
    fresh.start(TEXTS[0], 8)
    want = fresh.forward(b)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    target.keep(p0 + 1)
    torch.testing.assert_close(target.forward(b[:, 1:]), want[:, 1:], rtol=1e-4, atol=1e-4)


def test_left_padded_batch_rows_equal_single_rows(target):
    both = mmspec.autoregressive(target, TEXTS, max_new_tokens=25)
    for i, text in enumerate(TEXTS):
        one = mmspec.autoregressive(target, text, max_new_tokens=25)
        n = int(one.lengths[0])
        assert int(both.lengths[i]) == n and torch.equal(both.tokens[i, :n], one.tokens[0, :n])


# -- delay pattern, end, decode ------------------------------------------------------------------

def test_delay_pattern_round_trip():
    codes = torch.randint(0, C, (2, K, 7))
    delayed = apply_delay(codes, C)  # [2, K, 7 + K - 1]
    assert torch.equal(revert_delay(delayed), codes)
    assert all(bool((delayed[:, k, :k] == C).all()) for k in range(K))


def test_stream_follows_the_delay_pattern_and_ends_after_the_last_codebook(target):
    gen = mmspec.autoregressive(target, TEXTS, max_new_tokens=60)
    eos = target.eos_id
    for b in range(2):
        n = int(gen.lengths[b])
        steps = gen.tokens[b, :n]  # [n, K]
        for k in range(K):
            assert bool((steps[:k, k] == target.pad_id).all())  # not-yet-started codebooks
        ends = (steps[:, 0] == eos).nonzero()
        assert len(ends) == 1, "this tiny model ends within 60 steps"
        e = int(ends[0])
        assert n == e + K  # finished K - 1 steps after codebook 0's EOS
        for k in range(K):
            assert int(steps[e + k, k]) == eos and bool((steps[e + k + 1 :, k] == target.pad_id).all())
            assert bool((steps[k : e + k, k] < C).all())  # codes only in between
        codes = target.codes(gen.tokens[b : b + 1], gen.lengths[b : b + 1])[0]
        assert torch.equal(codes, revert_delay(steps[: e + K - 1].T[None])[0, :, :e])
        assert gen.outputs[b].waveform.shape == (e * 320,) and gen.outputs[b].sample_rate == 16000


@pytest.mark.parametrize("seed", range(6))
def test_mid_stream_shortcut_allows_what_the_general_rule_allows(folders, seed):
    """``_constrain``'s mid-stream shortcut (no padding, past the delay's opening, no EOS fed) masks the same ids
    as the general rule, on fed streams with and without an EOS and at every distance from the start."""
    target = SpeechTarget.from_pretrained(folders["target"], device="cpu")
    gen = torch.Generator().manual_seed(seed)
    target.start("Hello world", 40)
    for step in range(12):
        T = int(torch.randint(1, 4, (1,), generator=gen))
        frames = torch.randint(0, C, (1, T, K), generator=gen)
        if step == 8 + seed % 3:
            frames[0, -1, 0] = target.eos_id  # the stream's end enters the fed frames
        logits = target.forward(frames)  # [1, T, K, V]: the shortcut where it applies
        shortcut = target._steady(T, K)
        target._steady = lambda *args: False  # the general rule on the same fed frames
        general = target._constrain(torch.zeros_like(logits))
        del target._steady
        assert torch.equal(torch.isinf(logits), torch.isinf(general)), (step, shortcut)
        if step == 6:
            assert shortcut, "mid-stream without an EOS: the shortcut applies"
    assert not target._steady(1, K), "after an EOS the general rule runs"


class SpyCodec:
    sample_rate = 16000

    def __init__(self):
        self.seen = []

    def decode(self, codes):
        self.seen.append(codes.clone())
        return torch.zeros(codes.shape[0], 1, codes.shape[-1] * 320)


@pytest.mark.parametrize("max_new", [2, 9, 60])
def test_decode_never_sees_special_ids_or_incomplete_frames(folders, max_new):
    spy = SpyCodec()
    t = SpeechTarget.from_pretrained(folders["target"], load_codec=False)
    t.codec, t.sample_rate = spy, 16000
    gen = mmspec.generate(t, mmspec.JacobiDrafter("random"), TEXTS, max_new_tokens=max_new, k=4)
    for b, codes in enumerate(spy.seen):
        assert bool(((codes >= 0) & (codes < C)).all())
        n = int(gen.lengths[b])
        ends = (gen.tokens[b, :n, 0] == t.eos_id).nonzero()
        expect = min(int(ends[0]) if len(ends) else n, n - K + 1)
        assert codes.shape[-1] == max(expect, 0)
    short = [o for o in gen.outputs if len(o) == 0]
    assert len(spy.seen) + len(short) == 2


# -- exact per-codebook verification --------------------------------------------------------------

def exact_distribution(t: SpeechTarget, text: str, n: int) -> dict:
    """Probability of every continuation of n steps (or fewer, ending the row), enumerated with the
    adapter's own constrained logits."""
    import itertools

    out = {}

    def walk(logits, prefix, prob):
        probs = torch.softmax(logits[0, -1], -1)  # [K, V]
        choices = [torch.nonzero(probs[k] > 0)[:, 0].tolist() for k in range(t.num_codebooks)]
        for frame in itertools.product(*choices):
            pr = prob * float(torch.prod(probs[torch.arange(t.num_codebooks), torch.tensor(frame)]))
            seq = prefix + (frame,)
            if len(seq) == n or frame[-1] == t.eos_id:  # n steps, or the row's end
                out[seq] = out.get(seq, 0.0) + pr
                continue
            pos = t.pos.clone()
            nxt = t.forward(torch.tensor([[frame]]))
            walk(nxt, seq, pr)
            t.keep(pos)

    walk(t.start(text, n), (), 1.0)
    return out




@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """K = 2 codebooks of 2 codes (V = 4 with pad and EOS): small enough to enumerate 3 steps."""
    root = tmp_path_factory.mktemp("small")
    t = make_folder(root / "t", K=2, C=2, seed=3, sharp=12.0, codec=False)
    d = make_folder(root / "d", K=2, C=2, seed=4, sharp=12.0, layers=1, codec=False)
    return SpeechTarget.from_pretrained(str(t), load_codec=False), SpeechTarget.from_pretrained(str(d), load_codec=False)


@pytest.mark.slow
@pytest.mark.parametrize("which, rule", [("model", accept.speculative), ("jacobi", accept.speculative),
                                         ("model", accept.joint), ("coupled", accept.joint)])
def test_per_codebook_speculative_sampling_is_exact(small, which, rule):
    """Per-codebook (``speculative``) and joint-frame (``joint``) tests, plain and coupled Jacobi drafts."""
    target, draft = small
    n, runs = 3, 1500
    probs = exact_distribution(target, "Hi", n)
    assert abs(sum(probs.values()) - 1) < 1e-4 and len(probs) > 6
    counts = Counter()
    for seed in range(runs):
        drafter = {"model": lambda: mmspec.ModelDrafter(draft), "jacobi": lambda: mmspec.JacobiDrafter("random"),
                   "coupled": lambda: CoupledJacobiDrafter("random")}[which]()
        gen = mmspec.generate(target, drafter, "Hi", max_new_tokens=n, k=2, rule=rule,
                              sampling=Sampling(temperature=1.0), seed=seed)
        counts[tuple(tuple(f) for f in gen.tokens[0].tolist())] += 1
    assert chi2_pvalue(counts, probs, runs) > 1e-3


# -- relaxed acceptance (lossy, bounded) ----------------------------------------------------------

def one_step(rule, p_logits, q, rows=20000, seed=0):
    """Run ``rule`` on one drafted frame sampled from q in ``rows`` independent rows: committed frame 0."""
    g = torch.Generator().manual_seed(seed + 1)
    Kc, V = q.shape
    x = torch.multinomial(q.repeat(rows, 1), 1, generator=g).view(rows, 1, Kc)  # [rows, 1, K]
    draft = Draft(tokens=x, probs=q.expand(rows, 1, Kc, V))
    logits = p_logits.expand(rows, 2, Kc, V)
    verdict = rule(draft, logits, Sampler(Sampling(temperature=1.0), seed), torch.zeros(rows, dtype=torch.long))
    return verdict.tokens[:, 0]  # [rows, K]


def test_relaxed_rule_bound_and_exact_coarse_codebook():
    torch.manual_seed(0)
    V, rows, beta = 5, 40000, 0.2
    p_logits = torch.randn(2, V) * 1.5
    p_logits[1, 4] = float("-inf")  # a constrained id: never accepted even with tolerance
    q = torch.softmax(torch.randn(2, V) * 1.5, -1)
    p = torch.softmax(p_logits, -1)
    out = one_step(functools.partial(relaxed, beta=beta), p_logits, q, rows)
    emp = torch.stack([torch.bincount(out[:, k], minlength=V).float() / rows for k in range(2)])  # [K, V]
    tv = 0.5 * (emp - p).abs().sum(-1)  # [K]
    noise = 3 * (V / rows) ** 0.5
    assert tv[0] < noise  # codebook 0: exact
    over = (q[1] > p[1]).float() @ q[1]
    assert tv[1] <= beta * over + noise  # the stated bound
    assert tv[1] > noise  # and it is lossy
    assert int(emp[1, 4] * rows) == 0  # support respected
    exact = one_step(accept.speculative, p_logits, q, rows)
    tv_exact = 0.5 * (torch.bincount(exact[:, 1], minlength=V).float() / rows - p[1]).abs().sum()
    assert tv_exact < noise


def test_relaxed_accepts_more_and_keeps_the_stream_valid(folders, target):
    draft = SpeechTarget.from_pretrained(folders["draft"], load_codec=False)
    kw = dict(max_new_tokens=30, k=4, sampling=Sampling(temperature=1.0))
    acc = {}
    for name, rule in (("exact", accept.speculative), ("relaxed", relaxed_rule(0.5))):
        rates = []
        for seed in range(8):
            gen = mmspec.generate(target, mmspec.ModelDrafter(draft), TEXTS, **kw, seed=seed, rule=rule)
            rates.append(gen.stats["mean_accepted"])
            target.codes(gen.tokens, gen.lengths)  # raises on special ids inside the audio
        acc[name] = sum(rates) / len(rates)
    assert acc["relaxed"] > acc["exact"]
    with pytest.raises(ValueError, match="beta"):
        relaxed_rule(1.5)


# -- training-free drafter -------------------------------------------------------------------------

def test_codec_lookup_guesses_per_codebook_and_uses_the_prior():
    from mmspec.speech.drafters import continue_codebooks

    seq = torch.tensor([[[1, 5], [2, 6], [1, 7], [3, 6]]])  # [1, 4, 2]
    # codebook 0: 3 unseen -> repeat 3; codebook 1: 6 was followed by 7 -> 7, then 7 was followed by 6
    assert continue_codebooks(seq, 2).tolist() == [[[3, 7], [3, 6]]]
    prior = fit_prior([torch.tensor([[3, 0, 3, 0], [5, 5, 5, 5]])], vocab_size=8)
    assert prior.shape == (2, 8) and int(prior[0, 3]) == 0 and int(prior[0, 7]) == -1
    assert continue_codebooks(seq, 1, prior).tolist() == [[[0, 7]]]
    with pytest.raises(ValueError):
        CodecLookupDrafter(prior=torch.zeros(2, 8))


# -- modality interface, CLI, bad input ------------------------------------------------------------

def test_load_by_voice_and_save_wav(folders, tmp_path):
    t = api.load(folders["target"], voice="bass")
    assert t.voice == 1
    gen = mmspec.generate(t, None, api.prompts("Hello", 2), max_new_tokens=30)
    files = gen.save(str(tmp_path / "speech.wav"))
    assert files == [str(tmp_path / "speech_0.wav"), str(tmp_path / "speech_1.wav")]
    for f, w in zip(files, gen.outputs):
        assert isinstance(w, Audio) and w.seconds == len(w.waveform) / 16000
        with wave.open(f) as r:  # the samples written are the waveform's, as 16-bit PCM
            assert r.getframerate() == 16000 and r.getnchannels() == 1 and r.getnframes() == len(w)
            pcm = torch.frombuffer(bytearray(r.readframes(r.getnframes())), dtype=torch.int16)
        assert torch.equal(pcm, w.pcm16())


def test_cli_generate_speech(folders, tmp_path, capsys):
    from mmspec.cli import main

    out = tmp_path / "speech.wav"
    rc = main(["generate", "--modality", "speech", "--target", folders["target"], "--draft", folders["draft"],
               "--prompt", "Hello world", "--drafter", "model", "--k", "4", "--seed", "0", "--out", str(out),
               "--max-new-tokens", "30", "--json", "--voice", "alto"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["files"] == [str(out)] and out.exists() and result["output_seconds"][0] >= 0
    assert len(result["token_ids"][0][0]) == K


@pytest.mark.parametrize("argv, match", [
    (["--prompt", ""], "non-empty"),
    (["--voice", "soprano"], "unknown voice"),
    (["--target", "zoo:nope"], "unknown speech zoo model"),
    (["--k", "0"], "--k"),
])
def test_cli_bad_input(folders, capsys, argv, match):
    from mmspec.cli import main

    base = ["generate", "--modality", "speech", "--target", folders["target"], "--max-new-tokens", "5"]
    assert main(base + argv) == 2
    assert match in capsys.readouterr().err


def test_bad_input(folders, target, tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        target.start("   ", 4)
    with pytest.raises(ValueError, match="non-empty"):
        target.start([], 4)
    with pytest.raises(ValueError, match="unknown voice"):
        SpeechTarget.from_pretrained(folders["target"], voice=7)
    with pytest.raises(ValueError, match="does not exist"):
        SpeechTarget.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="k"):
        mmspec.generate(target, CodecLookupDrafter(), "Hello", k=0)
    other = make_folder(tmp_path / "other", K=2, codec=False)
    with pytest.raises(ValueError, match="codebooks"):
        mmspec.generate(target, mmspec.ModelDrafter(SpeechTarget.from_pretrained(str(other))), "Hello", k=2)


# -- MusicGen (tiny random T5 + EnCodec + decoder built from configs) ------------------------------

def hf_musicgen(model, tokenizer, texts, n, scale):
    """generate() audio and its codes ``[B, K, n - K + 1]`` (the argmax of each step's guided scores, read
    at the positions its delay mask keeps)."""
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    out = model.generate(**enc, do_sample=False, guidance_scale=scale, max_new_tokens=n, output_scores=True,
                         return_dict_in_generate=True)
    K = model.decoder.num_codebooks
    steps = torch.stack([s.argmax(-1) for s in out.scores], dim=1).view(len(texts), K, n)  # [B, K, n]
    codes = torch.stack([steps[:, k, k : k + n - K + 1] for k in range(K)], dim=1)
    return out.sequences, codes  # audio [B, 1, S] (MusicGen returns audio as sequences), codes


@pytest.fixture(scope="module")
def musicgen(musicgen_models):
    return musicgen_models


@pytest.mark.parametrize("batch, scale", [(1, 3.0), (2, 3.0), (2, 1.0)])
def test_musicgen_greedy_equivalence_with_generate_and_every_method(musicgen, tokenizer, batch, scale):
    from mmspec.speech import MusicgenTarget

    model, small_model = musicgen
    texts = ["hello world", "for i in range"][:batch]
    n = 20
    audio, codes = hf_musicgen(model, tokenizer, texts, n, scale)
    target = MusicgenTarget(model, tokenizer, guidance_scale=scale)
    base = mmspec.autoregressive(target, texts, max_new_tokens=n)
    assert base.tokens.shape == (batch, n, 3) and int(base.tokens.max()) <= 32
    assert all(torch.equal(c, want) for c, want in zip(target.codes(base.tokens, base.lengths), codes))
    for b in range(batch):
        assert base.outputs[b].sample_rate == 8000
        torch.testing.assert_close(base.outputs[b].waveform, audio[b, 0], rtol=0, atol=1e-5)
    drafters = {
        "model": lambda: mmspec.ModelDrafter(MusicgenTarget(small_model, tokenizer, guidance_scale=scale)),
        "twin": lambda: mmspec.ModelDrafter(MusicgenTarget(model, tokenizer, guidance_scale=scale)),
        "prompt-lookup": lambda: mmspec.PromptLookupDrafter(),
        "jacobi": lambda: mmspec.JacobiDrafter("random"),
        "lookahead": lambda: mmspec.LookaheadDrafter(),
        "codec-lookup": lambda: CodecLookupDrafter(),
    }
    for name, make in drafters.items():
        gen = mmspec.generate(target, make(), texts, max_new_tokens=n, k=4)
        assert torch.equal(gen.tokens, base.tokens), name
        assert gen.stats["steps"] <= base.stats["steps"], name
        if name == "twin":
            assert gen.stats["acceptance_rate"] == 1.0


def test_a_musicgen_model_used_as_a_draft_later_decodes_on_its_own(musicgen, tokenizer):
    """Drafting starts the draft model with the run's budget and mutates nothing: the same object, used on
    its own afterwards with another length, decodes exactly as a fresh one (its own closing delay)."""
    from mmspec.speech import MusicgenTarget

    model, small_model = musicgen
    target = MusicgenTarget(model, tokenizer, guidance_scale=3.0)
    used = MusicgenTarget(small_model, tokenizer, guidance_scale=3.0)
    mmspec.generate(target, mmspec.ModelDrafter(used), ["hello world"], max_new_tokens=20, k=4)
    alone = mmspec.autoregressive(used, ["for i in range"], max_new_tokens=9)
    fresh = mmspec.autoregressive(MusicgenTarget(small_model, tokenizer, guidance_scale=3.0), ["for i in range"],
                                  max_new_tokens=9)
    assert torch.equal(alone.tokens, fresh.tokens) and alone.outputs == fresh.outputs
    assert used.new_steps == 9  # the closing delay of its own run, not the target's 20


def test_musicgen_rollback_and_pad_column(musicgen, tokenizer):
    from mmspec.speech import MusicgenTarget

    model, _ = musicgen
    target = MusicgenTarget(model, tokenizer, guidance_scale=3.0)
    first = target.start("hello", 10)  # [1, 1, K, V + 1]
    assert first.shape == (1, 1, 3, 33)
    assert torch.isfinite(first[0, 0, 0, :32]).all() and first[0, 0, 1:, :32].isinf().all()  # codebooks 1, 2 delayed
    a, b = torch.tensor([[[1, 32, 32], [2, 3, 32]]]), torch.tensor([[[4, 32, 32], [5, 6, 32]]])
    p0 = target.pos.clone()
    target.forward(a)
    target.keep(p0)
    got = target.forward(b)
    fresh = MusicgenTarget(model, tokenizer, guidance_scale=3.0)
    fresh.start("hello", 10)
    torch.testing.assert_close(got, fresh.forward(b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="MusicGen draft"):
        target.check_draft(object())


def test_api_loads_a_musicgen_folder(musicgen, tokenizer, tmp_path):
    model, _ = musicgen
    model.save_pretrained(tmp_path / "mg")
    tokenizer.save_pretrained(tmp_path / "mg")
    t = api.load(str(tmp_path / "mg"), guidance_scale=2.0)
    assert type(t).__name__ == "MusicgenTarget" and t.guidance_scale == 2.0
    with pytest.raises(ValueError, match="no voices"):
        api.load(str(tmp_path / "mg"), voice="alto")
