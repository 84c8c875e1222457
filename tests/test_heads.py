"""Self-drafters (Medusa heads, the EAGLE layer) on the target's own hidden states: greedy output equals
greedy autoregressive decoding and HF ``generate`` token for token with random heads (chains, a Medusa
tree, batch 1 and 2), the hidden state they read is the verify forward's (checked through the output head),
plain decoding records nothing, sampled drafting keeps the target's distribution, the training command runs
end to end, and loading refuses heads of another target."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

import mmspec
from mmspec.drafters import EagleDrafter, MedusaDrafter
from mmspec.drafters.int8 import DraftVocab, Int8Head, int8_copy
from mmspec.drafters.selfdraft import committed_states, read
from mmspec.heads import MedusaHeads, eagle_for, load_heads
from mmspec.testing import chi2_pvalue

PROMPTS = ["def add(a, b):", "class Stack:\n    def"]


def text_target(tiny_models, arch="llama"):
    from mmspec.text import TextTarget

    return TextTarget.from_pretrained(tiny_models[arch], device="cpu")


def drafter_of(kind: str, hidden: int = 32):
    torch.manual_seed(1)
    if kind == "medusa":
        return MedusaDrafter(MedusaHeads(hidden, 3, zero_init=False))
    if kind == "medusa-tree":
        return MedusaDrafter(MedusaHeads(hidden, 3, zero_init=False), tree=7, width=3)
    if kind == "eagle-tree":
        return EagleDrafter(eagle_for(hidden, hidden, 4, window=64), tree=9, width=3)
    if kind == "eagle-vocab":  # a reduced draft vocabulary: every other id
        return EagleDrafter(eagle_for(hidden, hidden, 4, window=64), vocab=torch.arange(0, 300, 2))
    return EagleDrafter(eagle_for(hidden, hidden, 4, window=64))


def hf_greedy(target, prompts, n):
    ids, pads = target.encode(prompts)
    mask = (torch.arange(ids.shape[1])[None, :] >= pads[:, None]).long()
    out = target.model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=1)
    return [row[: row.index(0) + 1] if 0 in row else row for row in out[:, ids.shape[1]:].tolist()]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("kind", ["medusa", "medusa-tree", "eagle", "eagle-tree", "eagle-vocab"])
def test_greedy_self_drafting_is_greedy_decoding(tiny_models, arch, batch, kind):
    target = text_target(tiny_models, arch)
    base = mmspec.autoregressive(target, PROMPTS[:batch], max_new_tokens=24)
    gen = mmspec.generate(target, drafter_of(kind), PROMPTS[:batch], max_new_tokens=24, k=3)
    assert torch.equal(gen.tokens, base.tokens)
    assert gen.token_ids() == hf_greedy(target, PROMPTS[:batch], 24)
    if kind == "medusa-tree":
        assert gen.steps[1].n_drafted == 7  # the full static tree (later steps near the budget are shallower)
    if kind == "eagle-tree":
        assert gen.steps[1].n_drafted == 9  # the node budget (depth 3, width 3: 21 candidates)


class CheckingMedusa(MedusaDrafter):
    """Asserts that the state it keeps, read through the output head, gives the newest committed frame."""

    def observe(self, step, target_logits):
        super().observe(step, target_logits)
        with torch.inference_mode():
            newest = read(self.head, self.state[:, None], 1).argmax(-1)  # [B, 1, 1]
        frames = step.frames.gather(1, step.newest()[:, None, None])  # [B, 1, 1] each row's newest (own count)
        live = step.row_counts() > 0  # rows that committed this step
        assert torch.equal(newest[live], frames[live]), "the kept state is not the newest frame's predecessor"
        self.checked = getattr(self, "checked", 0) + 1


class CheckingEagle(EagleDrafter):
    """Asserts that the kept keys and values give what the layer gives over the whole window of pairs, and
    that a cached chain draft is the one a full pass per drafted frame would draft."""

    def observe(self, step, target_logits):
        pairs = (committed_states(self.target, step), step.frames.clamp(min=0))
        self.seen = [pairs] if not hasattr(self, "seen") else [*self.seen, pairs]
        super().observe(step, target_logits)
        feats, frames = (torch.cat([p[i] for p in self.seen], 1) for i in (0, 1))
        with torch.inference_mode():
            full = self.net(feats, self.embed(frames))[:, -1:]  # the layer the drafter runs (int8 on a CPU)
        assert torch.allclose(full, self.next_feat, atol=1e-4)
        self.feats, self.frames = feats, frames

    def propose(self, last, k):
        draft = super().propose(last, k)
        feats, frames = self.feats, self.frames
        with torch.inference_mode():
            for i in range(draft.size):  # the full-window reference: re-run every pair for every frame
                nxt = self.net(feats, self.embed(frames))[:, -1:]
                assert torch.equal(read(self.head, nxt, 1).argmax(-1), draft.tokens[:, i:i + 1])
                feats, frames = torch.cat([feats, nxt], 1), torch.cat([frames, draft.tokens[:, i:i + 1]], 1)
        self.checked = getattr(self, "checked", 0) + 1
        return draft


def test_eagle_cache_is_the_full_windows(tiny_models):
    target = text_target(tiny_models)
    torch.manual_seed(3)
    drafter = CheckingEagle(eagle_for(32, 32, 4, window=128))
    gen = mmspec.generate(target, drafter, PROMPTS, max_new_tokens=30, k=3)
    assert drafter.checked >= len(gen.steps) - 3 and drafter.checked > 10  # the last steps may draft nothing


@pytest.mark.parametrize("tree", [None, 7])
def test_the_state_read_is_the_verify_forwards(tiny_models, tree):
    target = text_target(tiny_models)
    drafter = CheckingMedusa(MedusaHeads(32, 3), tree=tree, width=3)  # zero init: head 1 = the target's next
    gen = mmspec.generate(target, drafter, PROMPTS, max_new_tokens=24, k=3)
    assert drafter.checked == len(gen.steps)


def test_plain_decoding_records_no_hidden_state(tiny_models):
    target = text_target(tiny_models)
    mmspec.generate(target, drafter_of("eagle"), PROMPTS[0], max_new_tokens=6)
    assert target.hidden_wanted
    mmspec.autoregressive(target, PROMPTS[0], max_new_tokens=6)
    assert not target.hidden_wanted
    with pytest.raises(ValueError, match="recorded no hidden state"):
        target.hidden()


@torch.inference_mode()
def exact_runs(target, prompt, sampling, n):
    """Exact probabilities of the first ``n`` tokens under ``sampling`` (warped as the rules warp)."""
    sampler = mmspec.Sampler(sampling)
    runs = {(): 1.0}
    for _ in range(n):
        longer = {}
        for run, pr in runs.items():
            ids = torch.cat([target.encode(prompt)[0], torch.tensor([run], dtype=torch.long)], 1)  # [1, L + t]
            p = sampler.probs(target.model(input_ids=ids).logits[:, -1:, None])[0, 0, 0]  # [V]
            longer.update({(*run, x): pr * float(p[x]) for x in p.nonzero()[:, 0].tolist()})
        runs = longer
    return runs


def blind(draft, target_logits, sampler, pos):
    """A broken rule for the negative control: it accepts every drafted frame, so the drafter's own
    distribution leaks into the output."""
    from mmspec.accept import commit

    ok = torch.ones(draft.tokens.shape[:2], dtype=torch.bool, device=draft.tokens.device)  # [B, D]
    return commit(draft.tokens, ok, sampler.sample(sampler.probs(target_logits)))


def sampled_runs(target, drafter, rule, sampling, runs):
    """Counts of the first three tokens over ``runs`` seeds, and the most frames one step drafted."""
    counts, drafted = Counter(), 0
    for seed in range(runs):
        gen = mmspec.generate(target, drafter, "def", max_new_tokens=4, k=2, rule=rule, sampling=sampling, seed=seed)
        counts[tuple(gen.tokens[0, :3, 0].tolist())] += 1
        drafted = max([drafted, *(s.n_drafted for s in gen.steps)])
    return counts, drafted


@pytest.mark.parametrize("kind", ["medusa", "eagle", "eagle-vocab"])
def test_sampled_self_drafting_keeps_the_distribution(tiny_models, kind):
    """Tokens 2 and 3 come from one step that drafted both (q kept), verified by the speculative rule: the
    first three tokens follow the target's distribution; accepting the same drafts blindly does not."""
    target = text_target(tiny_models)
    sampling, runs = mmspec.Sampling(temperature=1.0, top_k=3), 240
    exact = exact_runs(target, "def", sampling, 3)
    counts, drafted = sampled_runs(target, drafter_of(kind), mmspec.accept.speculative, sampling, runs)
    assert drafted == 2
    assert not set(counts) - set(exact) and chi2_pvalue(counts, exact, runs) > 1e-3
    # negative control: the drafts' own distribution is far from the target's
    blind_counts, _ = sampled_runs(target, drafter_of(kind), blind, sampling, 60)
    assert set(blind_counts) - set(exact) or chi2_pvalue(blind_counts, exact, 60) < 1e-6
    if kind == "eagle-vocab":  # the drafter only ever guessed ids of its vocabulary (blind: the output's)
        assert all(t % 2 == 0 for run in blind_counts for t in run[1:])


@pytest.mark.parametrize("kind", ["medusa", "eagle", "medusa1", "eagle1"])  # *1: the engines' layouts
def test_train_command_end_to_end(tiny_models, tmp_path, kind):
    from mmspec.heads.cli import main

    data = tmp_path / "data.txt"
    data.write_text("".join(f"def f{i}(a, b):\n    return a + b * {i}\n" for i in range(40)))
    out = tmp_path / kind
    assert main(["--target", tiny_models["llama"], "--kind", kind, "--out", str(out), "--data", str(data),
                 "--time-budget", "4", "--seq-len", "32", "--device", "cpu"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == kind and config["vocab_size"] == 300 and config["training"]["steps"] > 0
    target = text_target(tiny_models)
    drafter = load_heads(out, target)
    base = mmspec.autoregressive(target, PROMPTS, max_new_tokens=16)
    assert torch.equal(mmspec.generate(target, drafter, PROMPTS, max_new_tokens=16, k=3).tokens, base.tokens)


def test_load_refuses_heads_of_another_target(tiny_models, tmp_path):
    from mmspec.heads import save_heads, target_info

    llama, gpt2 = text_target(tiny_models), text_target(tiny_models, "gpt2")
    save_heads(MedusaHeads(32, 2), tmp_path / "h", target_info(llama, "llama"))
    assert isinstance(load_heads(tmp_path / "h", llama), MedusaDrafter)
    with pytest.raises(ValueError, match="trained for another target.*fingerprint"):
        load_heads(tmp_path / "h", gpt2)  # same sizes, another output head
    from mmspec.text import TextTarget

    half = TextTarget.from_pretrained(tiny_models["llama"], device="cpu", dtype="bfloat16")
    assert isinstance(load_heads(tmp_path / "h", half), MedusaDrafter)  # the same target in another dtype
    from mmspec.heads.store import _legacy_fingerprint

    config = json.loads((tmp_path / "h" / "config.json").read_text())
    (tmp_path / "h" / "config.json").write_text(json.dumps({**config, "fingerprint": _legacy_fingerprint(llama)}))
    assert isinstance(load_heads(tmp_path / "h", llama), MedusaDrafter)  # heads saved by an earlier version
    with pytest.raises(ValueError, match="fingerprint"):
        load_heads(tmp_path / "h", gpt2)
    config = json.loads((tmp_path / "h" / "config.json").read_text())
    (tmp_path / "h" / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(ValueError, match="hidden_size"):
        load_heads(tmp_path / "h", llama)
    (tmp_path / "h" / "config.json").write_text(json.dumps({**config, "kind": "hydra"}))
    with pytest.raises(ValueError, match="kind 'hydra'"):
        load_heads(tmp_path / "h", llama)
    with pytest.raises(ValueError, match="not a heads folder"):
        load_heads(tmp_path / "missing", llama)


def test_a_cache_checks_the_target_once_until_its_output_head_changes(tiny_models, tmp_path, monkeypatch):
    """With a cache (repeated runs), the digest of the target's output head runs once; another target object or an
    in-place change of the head's weights (as training makes) checks again, and refuses then."""
    from mmspec.heads import save_heads, store, target_info

    llama, other = text_target(tiny_models), text_target(tiny_models)
    save_heads(MedusaHeads(32, 2), tmp_path / "h", target_info(llama, "llama"))
    calls = []
    check = store.check_target
    monkeypatch.setattr(store, "check_target", lambda *a: calls.append(a[1]) or check(*a))
    cache: dict = {}
    for _ in range(3):
        assert isinstance(load_heads(tmp_path / "h", llama, cache=cache), MedusaDrafter)
    assert calls == [llama]
    load_heads(tmp_path / "h", other, cache=cache)  # an equal target, but another object: checked
    load_heads(tmp_path / "h", llama)  # no cache: checked every time
    assert calls == [llama, other, llama]
    load_heads(tmp_path / "h", llama, cache=cache)
    load_heads(tmp_path / "h", llama, cache=cache)
    assert calls == [llama, other, llama, llama]  # the cache holds llama's check again
    with torch.no_grad():
        llama.output_head().identity().mul_(2)  # the weights changed in place: the heads are another target's now
    with pytest.raises(ValueError, match="trained for another target.*fingerprint"):
        load_heads(tmp_path / "h", llama, cache=cache)


def test_eagle_depth_caps_the_draft(tiny_models):
    target = text_target(tiny_models)
    torch.manual_seed(0)
    gen = mmspec.generate(target, EagleDrafter(eagle_for(32, 32, 4, window=64), depth=2), PROMPTS, max_new_tokens=12, k=5)
    assert max(s.n_drafted for s in gen.steps) == 2
    assert torch.equal(gen.tokens, mmspec.autoregressive(target, PROMPTS, max_new_tokens=12).tokens)
    with pytest.raises(ValueError, match="depth"):
        EagleDrafter(eagle_for(32, 32, 4, window=64), depth=0)


def test_int8_head_reads_close_to_the_head():
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 500, bias=False)
    fast = Int8Head.of(head)
    x = torch.randn(3, 7, 64)
    with torch.inference_mode():
        exact, approx = head(x), fast(x)
    assert isinstance(fast, Int8Head) and approx.shape == exact.shape and approx.dtype == torch.float32
    assert (approx - exact).abs().max() < 0.05 * exact.abs().max()
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() > 0.9
    sub = DraftVocab(head, torch.arange(0, 500, 5), 500, int8=True)  # a draft vocabulary reads int8 too
    assert isinstance(sub.sub, Int8Head) and torch.isinf(sub(x)[..., 1]).all()
    plain = DraftVocab(head, torch.arange(0, 500, 5), 500)
    assert Int8Head.of(plain) is plain and type(plain.sub) is torch.nn.Linear  # not one map: left as it is
    biased = torch.nn.Linear(64, 10)  # a drafter's own layer (EAGLE's fc has a bias)
    with torch.inference_mode():
        assert torch.allclose(Int8Head.of(biased)(x), biased(x), atol=0.05)
    from mmspec.hf import Projection

    sliced = Projection(biased, 2, 5)  # a target head sliced to its code rows, with a bias: left as it is
    assert Int8Head.of(sliced) is sliced
    narrow = torch.nn.Linear(40, 640)  # torch's int8 kernel crashes on widths not divisible by 16
    assert Int8Head.of(narrow) is narrow
    layer = eagle_for(16, 16, 4, window=16)  # MLP width 40: the int8 copy keeps that map in float
    assert isinstance(int8_copy(layer).layer.mlp.down_proj, torch.nn.Linear)
    with torch.inference_mode():
        int8_copy(layer)(torch.randn(2, 5, 16), torch.randn(2, 5, 16))  # several rows: no crash
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 500))  # not one map
    rows = torch.arange(0, 500, 7)
    picked = DraftVocab(mlp, rows, 500)
    with torch.inference_mode():
        full, small = mlp(x), picked(x)
    assert torch.equal(small[..., rows], full[..., rows]) and torch.isinf(small[..., 1]).all()


def test_eagle_confidence_stops_unsure_chains(tiny_models):
    target = text_target(tiny_models)
    torch.manual_seed(0)
    layer = eagle_for(32, 32, 4, window=64)
    sure = mmspec.generate(target, EagleDrafter(layer), PROMPTS, max_new_tokens=16, k=5)
    unsure = mmspec.generate(target, EagleDrafter(layer, confidence=0.9), PROMPTS, max_new_tokens=16, k=5)
    assert torch.equal(unsure.tokens, sure.tokens)  # output never changes
    assert max(s.n_drafted for s in unsure.steps) < max(s.n_drafted for s in sure.steps) == 5
    with pytest.raises(ValueError, match="confidence must be a probability"):
        EagleDrafter(layer, confidence=1.5)


def test_int8_copies_are_made_once_and_remade_after_training(tiny_models):
    target = text_target(tiny_models)
    torch.manual_seed(0)
    layer = eagle_for(32, 32, 4, window=64)
    first, second = EagleDrafter(layer), EagleDrafter(layer)
    for drafter in (first, second):
        mmspec.generate(target, drafter, PROMPTS[0], max_new_tokens=4, k=2)
    assert first.head is second.head and first.net is second.net  # quantized once, not in every run
    with torch.no_grad():
        layer.fc.weight.add_(1.0)  # a training step changes the weights in place
    third = EagleDrafter(layer)
    mmspec.generate(target, third, PROMPTS[0], max_new_tokens=4, k=2)
    assert third.net is not first.net and third.head is first.head  # the layer is requantized, the head is not


def test_model_card_names_the_drafting_settings_and_extra_methods(tmp_path):
    from mmspec.heads import save_heads
    from mmspec.heads.card import write_card

    info = {"target": "zoo:t", "hidden_size": 32, "vocab_size": 300, "num_codebooks": 1, "fingerprint": "ab"}
    save_heads(eagle_for(32, 32, 4, window=64), tmp_path, info, {"confidence": 0.2, "depth": 8,
                                                                  "training": {"held_out_top1": 0.5}})
    run = {"mean_accepted": 3.0, "speedup": 1.5, "rule": "greedy"}
    card = write_card(tmp_path, {**run, "also": {"prompt-lookup|heads": {**run, "speedup": 2.0}}}).read_text()
    assert "top probability is below 0.2" in card and "at most 8 frames" in card
    assert "| `prompt-lookup\\|heads`, same run: mean accepted / speedup | 3.00 / 2.00x |" in card


def test_start_checks_before_it_sets_anything(tiny_models):
    """A refused start leaves the drafter as it was (the checks are pure; the set-up comes after them)."""
    target = text_target(tiny_models)
    for drafter in (MedusaDrafter(MedusaHeads(64, 2)), EagleDrafter(eagle_for(32, 32, 4, window=64), vocab=torch.tensor([999]))):
        before = dict(vars(drafter))
        with pytest.raises(ValueError, match="hidden size 64|draft vocabulary needs"):
            mmspec.generate(target, drafter, PROMPTS[0], max_new_tokens=4)
        assert vars(drafter) == before


def test_the_old_import_path_names_the_new_one():
    import mmspec.drafters.heads as old

    with pytest.warns(DeprecationWarning, match="moved to mmspec.drafters.int8.Int8Head"):
        assert old.Int8Head is Int8Head
    with pytest.raises(AttributeError, match="selfdraft.check"):
        old.attach
    import mmspec.heads.data as data

    with pytest.raises(AttributeError, match="mmspec.text.corpus.token_stream"):
        data.token_stream


def test_a_drafter_must_declare_wants_hidden(tiny_models):
    class Undeclared:
        def start(self, target, sampler, prompt, max_new_tokens): ...
        def propose(self, last, k): ...
        def observe(self, step, target_logits): ...

    with pytest.raises(ValueError, match="declare wants_hidden"):
        mmspec.generate(text_target(tiny_models), Undeclared(), PROMPTS[0], max_new_tokens=4)
    with pytest.raises(ValueError, match="declare wants_hidden"):
        mmspec.MixedDrafter([Undeclared()])


def int8_layer(kind: str, seed: int):
    """A small EAGLE layer of ``kind`` (eagle / eagle1) with random weights and the ``Int8EagleLayer`` a CPU drafter
    runs it as (skips where the C kernels do not build)."""
    from mmspec import skinny
    from mmspec.drafters.int8 import Int8EagleLayer, eagle_int8
    from mmspec.heads import Eagle1Layer

    if skinny.library() is None:
        pytest.skip(f"no skinny kernel here: {skinny.reason()}")
    torch.manual_seed(seed)
    layer = eagle_for(32, 32, 4, window=16) if kind == "eagle" else Eagle1Layer(32, 32, 4, 80, window=16)
    for p in layer.parameters():
        p.data = torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0)
    net = eagle_int8(layer)
    assert isinstance(net, Int8EagleLayer)
    return layer, net


@pytest.mark.parametrize("kind", ["eagle", "eagle1"])
def test_the_int8_eagle_layer_is_the_layer_on_its_rounded_weights(kind):
    """Where the skinny kernel builds, an EAGLE drafter on a CPU runs ``Int8EagleLayer``: its parts (fc, q/k/v with
    the norm and rotary angles folded in, attention, o and the MLP with the gate and residuals folded in) give what
    the float layer gives on the same int8-rounded weights, for a whole window and for pairs after a cache."""
    import copy

    from mmspec.drafters.int8 import quantize

    layer, net = int8_layer(kind, seed=0)
    rounded = copy.deepcopy(layer)
    for m in rounded.modules():
        if isinstance(m, torch.nn.Linear):
            q, scales = quantize(m.weight)
            m.weight.data = q.float() * scales.float()[:, None]
    feats, emb = torch.randn(2, 6, 32), torch.randn(2, 6, 32)
    with torch.inference_mode():
        torch.testing.assert_close(net(feats, emb), rounded(feats, emb), rtol=1e-4, atol=1e-4)
        x = net.project(feats[:, :2], emb[:, :2])  # two new pairs after 6 cached ones, at positions 6 and 7
        torch.testing.assert_close(x, rounded.project(feats[:, :2], emb[:, :2]), rtol=1e-4, atol=1e-4)
        positions = torch.tensor([[6, 7]])
        mine, theirs = net.qkv(x, positions), rounded.qkv(x, positions)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        keys, values = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
        mask = torch.ones(2, 2, 8, dtype=torch.bool).tril(6)
        mask[1, :, 0] = False  # a hole in one row
        torch.testing.assert_close(net.attend(x, mine[0], keys, values, mask),
                                   rounded.attend(x, theirs[0], keys, values, mask), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["eagle", "eagle1"])
def test_the_int8_eagle_step_in_one_call_equals_its_parts(kind):
    """``Int8EagleLayer.step`` (one call of ``eagle.c``: embedding lookup, fc, q/k/v with the norm and rotary angles,
    the keys and values appended, attention, o, the MLP) gives what its parts give run one by one, for a chain after a
    cache, a pair with no cache, pairs with a mask (holes, a tree), positions past the rotary table, an embedding that
    is a codebook table (looked up in C) and one that is any module (embedded in Python); a deep copy steps alike."""
    import copy

    from mmspec.hf import FrameEmbedding

    _, net = int8_layer(kind, seed=1)
    codebooks = FrameEmbedding(torch.nn.Embedding(3 * 10, 32), [0, 10, 20])  # K = 3 codebooks of 10 ids
    other = torch.nn.Sequential(FrameEmbedding(torch.nn.Embedding(30, 32)), torch.nn.Tanh())

    def parts(feats, frames, embed, positions, keys, values, mask):
        x = net.project(feats, embed(frames))
        q, k, v = net.qkv(x, positions)
        keys, values = torch.cat([keys, k], 2), torch.cat([values, v], 2)
        T, S = x.shape[1], keys.shape[2]
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool).tril(S - T).expand(x.shape[0], T, S)
        return net.attend(x, q, keys, values, mask), keys, values

    cases = [(1, 1, 6, None), (2, 3, 5, None), (2, 2, 0, None), (1, 1, 200, None)]  # (B, T, S, mask), 200: past table
    hole = torch.ones(2, 3, 8, dtype=torch.bool).tril(5)
    hole[1, :, 0] = False  # a slot row 1 does not hold
    tree = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1, 0, 1]], dtype=torch.bool)
    cases += [(2, 3, 5, hole), (2, 3, 5, tree.expand(2, 3, 8))]
    with torch.inference_mode():
        for embed in (codebooks, other):
            for B, T, S, mask in cases:
                K = 3 if embed is codebooks else 1
                feats, frames = torch.randn(B, T, 32), torch.randint(-1, 10, (B, T, K))  # -1: read as id 0
                keys, values = torch.randn(B, 4, S, 8), torch.randn(B, 4, S, 8)
                positions = torch.arange(S, S + T)[None].expand(B, T) + torch.arange(B)[:, None]
                got = net.step(feats, frames, embed, positions, keys, values, mask)
                want = parts(feats, frames.clamp(min=0), embed, positions, keys, values, mask)
                for a, b in zip(got, want):
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        twin = copy.deepcopy(net)
        feats, frames = torch.randn(1, 2, 32), torch.randint(0, 10, (1, 2, 3))
        keys, values, positions = torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 8), torch.tensor([[4, 5]])
        for a, b in zip(twin.step(feats, frames, codebooks, positions, keys, values, None),
                        net.step(feats, frames, codebooks, positions, keys, values, None)):
            assert torch.equal(a, b)
        with pytest.raises(ValueError, match="embedding row"):  # id 10 of the last codebook: row 30 of a 30-row table
            net.step(feats, torch.full((1, 2, 3), 10), codebooks, positions, keys, values, None)
        with pytest.raises(ValueError, match="keys and values"):  # keys of another head size: refused, never read
            net.step(feats, frames, codebooks, positions, keys[..., :4], values[..., :4], None)
        chain = net._kernel().chain
        with pytest.raises(ValueError, match="embedding table"):  # 2 codebooks of 16 ids at offsets 0, 20: rows past 30
            chain(net.o, 2, feats[:, 0], positions[:, 0], net._tables, keys, values, None, codebooks.table.weight,
                  torch.tensor([0, 20]), 2, 16)
        with pytest.raises(ValueError, match="logits"):  # 3 x 10 ids from a head of 32 outputs
            chain(net.o, 2, feats[:, 0], positions[:, 0], net._tables, keys, values, None, codebooks.table.weight,
                  torch.tensor([0, 10, 20]), 3, 10)


def _no_chain(*args, **kwargs):  # Int8EagleLayer.chain patched out: the drafter runs its own loop
    return None


def chain_setup(tiny_models, vocab):
    """The tiny text target, a random EAGLE layer and its draft vocabulary (None: all ids), where the kernels build."""
    from mmspec import skinny

    if skinny.library() is None:
        pytest.skip(f"no skinny kernel here: {skinny.reason()}")
    target = text_target(tiny_models)
    torch.manual_seed(3)
    return target, eagle_for(32, 32, 4, window=64), None if vocab is None else torch.arange(0, 300, 2)


@pytest.mark.parametrize("vocab", [None, "draft vocabulary"])
def test_the_greedy_chain_in_one_call_drafts_what_the_loop_drafts(tiny_models, monkeypatch, vocab):
    """Under greedy drafting an EAGLE chain on the int8 layer is one kernel call (``Int8EagleLayer.chain``): over a
    whole generation it drafts the very frames the drafter's own loop drafts (head read, argmax, layer step per round),
    on the whole head and on a draft vocabulary; output stays greedy decoding."""
    from mmspec.drafters.int8 import Int8EagleLayer

    target, layer, ids = chain_setup(tiny_models, vocab)
    runs = {}
    for name in ("kernel", "loop"):
        if name == "loop":
            monkeypatch.setattr(Int8EagleLayer, "chain", _no_chain)
        drafter, drafts = EagleDrafter(layer, vocab=ids), []
        propose = drafter.propose

        def record(last, k, propose=propose, drafts=drafts):
            draft = propose(last, k)
            drafts.append(draft.tokens.clone())
            return draft

        drafter.propose = record
        gen = mmspec.generate(target, drafter, PROMPTS, max_new_tokens=16, k=4)
        assert isinstance(drafter.net, Int8EagleLayer)
        runs[name] = (gen, drafts)
    (gen, drafts), (loop_gen, loop_drafts) = runs["kernel"], runs["loop"]
    assert len(drafts) == len(loop_drafts) > 3 and all(torch.equal(a, b) for a, b in zip(drafts, loop_drafts))
    assert torch.equal(gen.tokens, mmspec.autoregressive(target, PROMPTS, max_new_tokens=16).tokens)
    assert torch.equal(loop_gen.tokens, gen.tokens)


@pytest.mark.parametrize("vocab", [None, "draft vocabulary"])
def test_the_one_call_chain_masks_holes_and_stops_where_the_loop_stops(tiny_models, monkeypatch, vocab):
    """Rows that hold different slots (set by hand: random heads accept too little for that to happen in a run) and
    confidence stops that cut the chain after 1, some and all 5 rounds: the one-call chain drafts what the loop does."""
    from mmspec.drafters import selfdraft
    from mmspec.drafters.int8 import Int8EagleLayer

    target, layer, ids = chain_setup(tiny_models, vocab)
    drafter = EagleDrafter(layer, vocab=ids)
    target.track_hidden(True)
    target.start(PROMPTS, 16)
    drafter.start(target, gen_sampler(target), PROMPTS, 16)
    drafter.keys, drafter.values = torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 8)
    drafter.valid = torch.rand(2, 9) > 0.4
    drafter.valid[:, -1] = True
    drafter.holes, drafter.next_feat, drafter.P = True, torch.randn(2, 1, 32) * 3, torch.tensor([11, 14])
    tops = []  # per round, the most sure row's top probability (a chain ends where it is below the confidence)
    with torch.inference_mode(), monkeypatch.context() as patch:
        patch.setattr(Int8EagleLayer, "chain", _no_chain)
        patch.setattr(selfdraft, "read", lambda *a: tops.append(read(*a)) or tops[-1])
        drafter.confidence = 0.0
        drafter._chain(5)
    tops = [float(t.softmax(-1).amax(-1).amin(-1).max()) for t in tops[1:]]  # rounds 1..4
    later = min(tops[1:])
    cuts = [0.0, tops[0] * 1.01] + ([(later * 1.01)] if later < tops[0] else [])
    lengths = set()
    with torch.inference_mode():
        for confidence in cuts:
            drafter.confidence = confidence
            with monkeypatch.context() as patch:
                patch.setattr(Int8EagleLayer, "chain", _no_chain)
                loop = drafter._chain(5).tokens
            kernel = drafter._chain(5).tokens
            assert torch.equal(kernel, loop)
            lengths.add(kernel.shape[1])
    assert len(lengths) == len(cuts), (lengths, tops)


def gen_sampler(target):
    from mmspec.sampling import Sampler
    from mmspec.types import Sampling

    return Sampler(Sampling(), 0, target.device, keyed=False)


def test_without_the_kernel_eagle_drafts_on_its_int8_copy(tiny_models, monkeypatch):
    """Where the C kernels cannot be built, an EAGLE drafter runs its int8 copy through its own loop (no one-call step
    or chain) and greedy output is still greedy decoding."""
    from mmspec import skinny
    from mmspec.drafters.int8 import Int8EagleLayer

    monkeypatch.setattr(skinny, "_state", {"lib": None, "why": "no C compiler (a test)"})
    target = text_target(tiny_models)
    torch.manual_seed(0)
    drafter = EagleDrafter(eagle_for(32, 32, 4, window=64))
    gen = mmspec.generate(target, drafter, PROMPTS, max_new_tokens=12, k=4)
    assert not isinstance(drafter.net, Int8EagleLayer)
    assert max(s.n_drafted for s in gen.steps) == 4
    assert torch.equal(gen.tokens, mmspec.autoregressive(target, PROMPTS, max_new_tokens=12).tokens)
