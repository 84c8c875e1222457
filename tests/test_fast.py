"""The fast path (mmspec.fast): packed products, the static cache, and logits equal to the eager HF forward."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import mmspec
from mmspec import fast
from mmspec.text import TextTarget

PROMPTS = ["def add(a, b):", "class Stack:\n    def"]


def test_packed_product_equals_the_plain_product():
    torch.manual_seed(0)
    q, k = torch.randn(12, 16), torch.randn(6, 16)
    bias_q = torch.randn(12)
    packed = fast.PackedLinear([q, k], [bias_q, None])  # one product for both, k without a bias
    x = torch.randn(3, 5, 16)
    want = torch.cat([F.linear(x, q, bias_q), F.linear(x, k)], dim=-1)
    torch.testing.assert_close(packed(x), want, rtol=1e-5, atol=1e-5)
    half = fast.PackedLinear([q.half()])  # no packed kernel for float16: the plain product
    assert half.packed is None and torch.equal(half(x.half()), F.linear(x.half(), q.half()))


def test_static_cache_rolls_back_by_length_and_keeps_a_path_in_place():
    kv = fast.StaticKV(layers=1, rows=2, kv_heads=1, slots=2, head_dim=1, dtype=torch.float32, device="cpu")
    with torch.inference_mode():
        kv.reserve(6)  # grows (a copy) to hold 6
        assert kv.slots >= 6
        kv.write(0, *(torch.arange(6.0).view(1, 1, 6, 1).expand(2, 1, 6, 1),) * 2)
        kv.length = 6
    kv.crop(-2)
    assert kv.get_seq_length() == 4  # nothing copied: the last two slots are overwritten later
    kv.keep_tail(3, torch.tensor([[0, 2], [1, 2]]))  # of slots 1..3 keep (1, 3) in row 0 and (2, 3) in row 1
    assert kv.length == 3
    assert kv.keys[0, :, 0, :3, 0].tolist() == [[0.0, 1.0, 3.0], [0.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match="negative"):
        kv.crop(2)


def assert_forwards_agree(quick, eager, prompts, chain: torch.Tensor, nodes: torch.Tensor, *more: torch.Tensor) -> None:
    """On both targets: the prefill of ``prompts`` (16 new frames), a ``chain [2, 3, K]``, a tree of ``nodes [2, 4, K]``
    (parents -1, -1, 0, 1) kept along a different path per row, one frame, then each of ``more``: the fast path's
    logits agree with the eager forward's to float rounding."""
    parents = torch.tensor([-1, -1, 0, 1])
    got, want = [], []
    for target, out in ((quick, got), (eager, want)):
        out.append(target.start(prompts, 16))
        out.append(target.forward(chain))
        out.append(target.forward(nodes, parents))
        target.keep(target.pos - 4 + 2, torch.tensor([[1, 3], [0, 2]]))  # a different path per row
        out.append(target.forward(chain[:, :1]))
        out.extend(target.forward(frames) for frames in more)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fast_logits_equal_the_eager_forward(tiny_models, arch):
    """Prefill (left-padded), a chain and a tree: the two paths' logits agree to float rounding."""
    eager = TextTarget.from_pretrained(tiny_models[arch], fast=False)
    quick = TextTarget.from_pretrained(tiny_models[arch], fast=True)
    assert quick.forward_path == "fast" and eager.forward_path == "eager"
    chain = torch.tensor([[5, 6, 7], [8, 9, 10]])[..., None]  # [2, 3, 1]
    nodes = torch.tensor([[11, 12, 13, 14], [15, 16, 17, 18]])[..., None]  # [2, 4, 1]
    assert_forwards_agree(quick, eager, PROMPTS, chain, nodes)


def test_janus_runs_its_language_model_on_the_fast_path_as_the_eager_forward_does(janus_models):
    """Janus (guided: conditional and unconditional rows; a left-padded batch): the prefill, a chain, a tree kept along
    a different path per row, then greedy grids, autoregressive and drafted by the smaller Janus, all on the fast path:
    logits agree with the eager forward's to float rounding and every grid is the eager autoregressive one."""
    from mmspec.drafters.model import ModelDrafter
    from mmspec.image.janus import JanusTarget

    model, small = janus_models
    quick, eager = JanusTarget(model, guidance_scale=3.0, fast=True), JanusTarget(model, guidance_scale=3.0, fast=False)
    assert quick.forward_path == "fast" and eager.forward_path == "eager"
    prompts = [[2, 10, 11, 12, 5], [2, 20, 5]]
    chain = torch.tensor([[5, 6, 7], [8, 9, 10]])[..., None]  # [2, 3, 1] image codes
    nodes = torch.tensor([[11, 12, 13, 14], [15, 16, 17, 18]])[..., None]
    assert_forwards_agree(quick, eager, prompts, chain, nodes)
    grids = mmspec.autoregressive(eager, prompts, max_new_tokens=16).tokens
    assert torch.equal(mmspec.autoregressive(quick, prompts, max_new_tokens=16).tokens, grids)
    drafter = ModelDrafter(JanusTarget(small, guidance_scale=3.0, fast=True))
    assert torch.equal(mmspec.generate(quick, drafter, prompts, max_new_tokens=16, k=3).tokens, grids)


def test_musicgen_runs_its_decoder_on_the_fast_path_as_the_eager_forward_does(musicgen_models, tokenizer):
    """MusicGen (guided; two prompts of different lengths, so the encoder's padding is masked): the BOS step, a chain, a
    tree kept along a different path per row, a forward wider than the C attention takes, then greedy codes,
    autoregressive and drafted by the smaller MusicGen, on the fast path: logits agree with the eager forward's to float
    rounding and the codes are the eager ones."""
    from mmspec.drafters.model import ModelDrafter
    from mmspec.speech import MusicgenTarget

    model, small = musicgen_models
    quick = MusicgenTarget(model, tokenizer, guidance_scale=3.0, fast=True)
    eager = MusicgenTarget(model, tokenizer, guidance_scale=3.0, fast=False)
    assert quick.forward_path == "fast" and eager.forward_path == "eager"
    prompts = ["hello world", "for i in range(10): print(i)"]
    chain = torch.tensor([[[5, 32, 32], [6, 7, 32], [8, 9, 10]], [[1, 32, 32], [2, 3, 32], [4, 5, 6]]])  # [2, 3, 3]
    nodes = torch.tensor([[[11, 12, 13]] * 4, [[14, 15, 16]] * 4]) + torch.arange(4)[None, :, None]  # [2, 4, 3]
    assert_forwards_agree(quick, eager, prompts, chain, nodes,
                          torch.arange(2 * 34 * 3).view(2, 34, 3) % 32)  # past the C kernel's 32 frames
    codes = mmspec.autoregressive(eager, prompts, max_new_tokens=12).tokens
    assert torch.equal(mmspec.autoregressive(quick, prompts, max_new_tokens=12).tokens, codes)
    drafter = ModelDrafter(MusicgenTarget(small, tokenizer, guidance_scale=3.0, fast=True))
    assert torch.equal(mmspec.generate(quick, drafter, prompts, max_new_tokens=12, k=3).tokens, codes)


def test_fast_path_greedy_equals_hf_generate_with_a_model_drafter(tiny_models):
    target = TextTarget.from_pretrained(tiny_models["llama"], fast=True)
    draft = TextTarget.from_pretrained(tiny_models["llama-draft"], fast=True)
    assert draft.forward_path == "fast"
    ids, pads = target.encode(PROMPTS)
    mask = (torch.arange(ids.shape[1])[None, :] >= pads[:, None]).long()
    hf = target.model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=1)
    base = mmspec.autoregressive(target, PROMPTS, max_new_tokens=20)
    gen = mmspec.generate(target, mmspec.ModelDrafter(draft), PROMPTS, max_new_tokens=20, k=4)
    assert gen.token_ids() == base.token_ids()
    for row, ref in zip(base.token_ids(), hf[:, ids.shape[1]:].tolist()):
        assert row == ref[: len(row)]


def test_models_off_the_fast_path_say_why(tiny_models):
    gpt2 = TextTarget.from_pretrained(tiny_models["gpt2"])  # the default: silently eager
    assert gpt2.forward_path == "eager"
    with pytest.warns(UserWarning, match="fast path is off.*gpt2"):
        assert TextTarget.from_pretrained(tiny_models["gpt2"], fast=True).forward_path == "eager"
    assert fast.why_not(gpt2.model.base_model) is not None
    with pytest.raises(ValueError, match="fast must be True, False or None"):
        TextTarget.from_pretrained(tiny_models["llama"], fast="yes")


def test_a_rows_product_does_not_depend_on_how_many_rows_run_with_it():
    """Fewer rows than MIN_ROWS run padded, so one frame and a verify over many round every row alike: the
    products of a one-frame forward equal, bit for bit, that row's products inside any wider forward."""
    torch.manual_seed(0)
    for out_features, in_features in [(48, 48), (40, 96), (130, 48)]:
        packed = fast.PackedLinear([torch.randn(out_features, in_features) * 0.05])
        if packed.packed is None:
            pytest.skip("no oneDNN packed product in this torch build: the plain product makes no such promise")
        x = torch.randn(20, in_features)
        alone = packed(x[:1])
        assert all(torch.equal(packed(x[:m])[:1], alone) for m in (2, 3, 4, 5, 8, 9, 20))


def test_a_padded_batch_prefills_each_row_as_that_row_alone(tiny_models):
    """The fast path prefills a left-padded batch row by row over each row's own tokens: every row's logits and
    cached keys/values equal those of the row prefilled alone, and its padding slots stay untouched."""
    target = TextTarget.from_pretrained(tiny_models["llama"], fast=True)
    prompts = ["def add(a, b):\n    return a + b\n\ndef", "x ="]
    batch = target.start(prompts, 8)  # [2, 1, 1, V]
    kv, pads, L = target.cache.kv, target.pads.tolist(), target.cache.length
    assert pads[0] == 0 and pads[1] > 0 and kv.length == L
    assert bool((kv.keys[:, 1, :, : pads[1]] == 0).all()), "the padding slots are never computed"
    for b, prompt in enumerate(prompts):
        alone = TextTarget.from_pretrained(tiny_models["llama"], fast=True)
        logits = alone.start([prompt], 8)
        torch.testing.assert_close(batch[b: b + 1], logits, rtol=1e-5, atol=1e-5)
        own = alone.cache.kv
        torch.testing.assert_close(kv.keys[:, b, :, pads[b]: L], own.keys[:, 0, :, : own.length], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kv.values[:, b, :, pads[b]: L], own.values[:, 0, :, : own.length], rtol=1e-5,
                                   atol=1e-5)
    assert target.pos.tolist() == [L - p for p in pads]


def test_the_skinny_kernel_equals_the_plain_product_and_rounds_a_row_alike_in_any_batch():
    """mmspec.skinny (built where the CPU has it): x W^T + b for outputs that do and do not fill its 16-wide panels,
    any row count (one chunk up to 16 rows, 17-28 as 14 and the rest, more in chunks of up to 12, over one pass of
    the weights), and each row's result bit for bit the same however many rows run and whichever chunk it lands in."""
    from mmspec import skinny

    if skinny.library() is None:
        pytest.skip(f"no skinny kernel here: {skinny.reason()}")
    torch.manual_seed(0)
    for out_features, in_features, with_bias in [(48, 32, False), (37, 20, True), (130, 48, True), (7, 5, False)]:
        weight = torch.randn(out_features, in_features)
        bias = torch.randn(out_features) if with_bias else None
        product = skinny.SkinnyWeight(weight, bias)
        x = torch.randn(40, in_features)
        for m in (1, 2, 5, 9, 12, 13, 16, 17, 20, 25, 28, 29, 40):
            torch.testing.assert_close(product(x[:m]), F.linear(x[:m], weight, bias), rtol=1e-5, atol=1e-5)
        alone = torch.cat([product(x[i: i + 1]) for i in range(40)])  # [40, out], each row on its own
        for m in range(2, 41):
            assert torch.equal(product(x[:m]), alone[:m]), f"{m} rows: a row's bits changed with the rows beside it"
        w8, scales = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8), torch.rand(out_features)
        product8 = skinny.SkinnyWeight.int8(w8, scales, bias)  # a drafter's int8 copy: the same chunks and passes
        want = F.linear(x, w8.float() * scales[:, None], bias)
        alone = torch.cat([product8(x[i: i + 1]) for i in range(40)])
        torch.testing.assert_close(alone, want, rtol=1e-4, atol=1e-3)
        assert all(torch.equal(product8(x[:m]), alone[:m]) for m in (3, 9, 14, 16, 17, 20, 28, 29, 40))
    with pytest.raises(ValueError, match="float32"):
        skinny.SkinnyWeight(torch.randn(4, 4).half())


def test_without_the_skinny_kernel_products_run_on_onednn(monkeypatch):
    """Where the kernel cannot be built (no compiler, another CPU), the packed products run as before."""
    from mmspec import skinny

    monkeypatch.setattr(skinny, "_state", {"lib": None, "why": "no C compiler (a test)"})
    assert skinny.library() is None and skinny.reason() == "no C compiler (a test)"
    weight = torch.randn(24, 16)
    packed = fast.PackedLinear([weight])
    assert packed.skinny is None
    x = torch.randn(3, 16)
    torch.testing.assert_close(packed(x), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_the_skinny_call_folds_in_a_layers_elementwise_work_as_torch_does_it():
    """RMSNorm before, the SiLU gate before, a residual after and rotary angles on the first heads after: the
    skinny kernel's call (the fast path's decode and verify products) equals the same PackedLinear run with torch
    operations (its prefill path), and each row still comes out bit for bit the same however many rows run."""
    from mmspec import skinny

    if skinny.library() is None:
        pytest.skip(f"no skinny kernel here: {skinny.reason()}")
    torch.manual_seed(0)
    D, heads = 8, 5
    for in_features in (20, 48):
        weight, bias = torch.randn(heads * D, in_features) * 0.2, torch.randn(heads * D)
        kernel, plain = fast.PackedLinear([weight], [bias]), fast.PackedLinear([weight], [bias])
        plain.skinny = None  # torch's operations around oneDNN's (or the plain) product
        assert kernel.skinny is not None
        rows = 14
        x, gate_up = torch.randn(rows, in_features) * 3, torch.randn(rows, 2 * in_features) * 3
        norm = (torch.rand(in_features) + 0.5, 1e-5)
        residual = torch.randn(rows, heads * D)
        angles = torch.rand(rows, D // 2) * 6
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
        cases = [dict(x=x, norm=norm), dict(x=gate_up, gated=True), dict(x=x, residual=residual),
                 dict(x=x, norm=norm, rope=(cos, sin, 3)), dict(x=x, rope=(cos, sin, heads))]
        for case in cases:
            case = dict(case)
            inputs = case.pop("x")
            want = plain(inputs, **case)
            torch.testing.assert_close(kernel(inputs, **case), want, rtol=1e-4, atol=1e-4)

            def first(m):
                part = {k: (v[:m] if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
                if "rope" in part:
                    part["rope"] = (cos[:m], sin[:m], case["rope"][2])
                return kernel(inputs[:m], **part)[:1]

            alone = first(1)
            assert all(torch.equal(first(m), alone) for m in (2, 5, 9, 13, 14)), case.keys()
    twin = copy.deepcopy(kernel.skinny)  # after a call: a copy (a deep-copied drafter, a pickle) still runs
    assert torch.equal(twin(x), kernel.skinny(x))
    with pytest.raises(ValueError, match="at most one of norm and gated"):
        kernel.skinny(gate_up, norm=(torch.ones(2 * in_features), 1e-5), gated=True)
    with pytest.raises(ValueError, match="at most one of residual and rope"):
        kernel.skinny(x, residual=torch.zeros(rows, heads * D), rope=(cos, sin, 1))
    with pytest.raises(ValueError, match="residual"):
        kernel.skinny(x, residual=torch.zeros(rows, 3))
    with pytest.raises(ValueError, match="rope"):
        kernel.skinny(x, rope=(cos[:, :3], sin[:, :3], 1))


def test_few_frame_attention_equals_torchs_and_gives_a_frame_the_same_bits_in_any_verify():
    """mmspec.skinny.attend (the fast path's decode and verify attention where its kernel builds) equals torch's
    scaled-dot-product attention for chains and trees, padding holes, grouped key heads and head sizes that do and
    do not fill 16 lanes; and each query's result is bit for bit the one-frame forward's over the keys it sees."""
    from mmspec import skinny

    if skinny.library() is None:
        pytest.skip(f"no skinny kernel here: {skinny.reason()}")
    torch.manual_seed(0)
    lowest = torch.finfo(torch.float32).min
    for R, Hq, Hkv, D, S, T in [(1, 4, 4, 56, 37, 1), (2, 4, 2, 16, 50, 5), (3, 2, 1, 24, 20, 9), (1, 2, 2, 8, 70, 17)]:
        keys, values = torch.randn(R, Hkv, S + 7, D)[:, :, :S], torch.randn(R, Hkv, S + 7, D)[:, :, :S]  # a cache's view
        q = torch.randn(R, T, Hq, D).transpose(1, 2)  # as the fast path's q: [R, Hq, T, D], frames strided
        seen = torch.ones(R, T, S, dtype=torch.bool)
        seen[:, :, S - T:] = torch.ones(T, T, dtype=torch.bool).tril()
        if T > 2:  # a tree: the third frame is a second child of the first
            seen[:, 2, S - T + 1] = False
        seen[-1, :, :3] = False  # the last row's left padding
        mask = torch.zeros(R, 1, T, S).masked_fill(~seen[:, None], lowest)
        want = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=0.3,
                                              enable_gqa=Hq != Hkv).transpose(1, 2).reshape(R, T, Hq * D)
        got = skinny.attend(q, keys, values, mask, 0.3)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if T == 1:  # no mask: every key
            plain = F.scaled_dot_product_attention(q, keys, values, scale=0.3, enable_gqa=Hq != Hkv)
            torch.testing.assert_close(skinny.attend(q, keys, values, None, 0.3), plain.reshape(R, 1, Hq * D))
        for t in range(T):  # frame t alone, over the keys it sees (the same slots), as a one-frame forward runs it
            alone = skinny.attend(q[:, :, t: t + 1], keys, values, mask[:, :, t: t + 1], 0.3)
            assert torch.equal(alone, got[:, t: t + 1])
        causal = skinny.attend(q, keys, values, None, 0.3)  # no mask: a causal tail
        tail = torch.zeros(1, 1, T, S).masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T), lowest)
        assert torch.equal(causal, skinny.attend(q, keys, values, tail, 0.3))
        for t in range(T):  # a chain's frame t as the one-frame decode after it runs it: its keys only, no mask
            end = S - T + t + 1
            assert torch.equal(skinny.attend(q[:, :, t: t + 1], keys[:, :, :end], values[:, :, :end], None, 0.3),
                               causal[:, t: t + 1])
    with pytest.raises(ValueError, match="contiguous"):
        skinny.attend(q, keys.transpose(-1, -2), values, None, 0.3)
        own = mask[..., S - T:]  # the mask of the last T slots only (a tree's frames): the earlier slots all visible
        full = torch.cat([torch.zeros(R, 1, T, S - T), own], dim=-1)
        assert torch.equal(skinny.attend(q, keys, values, own, 0.3), skinny.attend(q, keys, values, full, 0.3))
    with pytest.raises(ValueError, match="mask"):
        skinny.attend(q, keys, values, mask[..., : T - 1], 0.3)  # narrower than the frames


@pytest.mark.parametrize("T", [3, 40])
@pytest.mark.parametrize("shape", ["chain", "tree"])
def test_a_verify_without_padding_builds_a_lean_mask_with_the_full_masks_result(tiny_models, T, shape):
    """Over a cache without padding or holes a verify chain builds no mask (``KVCache.lean_inputs`` gives None, the
    decoder reads it as the causal tail) and a tree only its own frames' ``[R, 1, T, T]``: the hidden states equal
    those of the same forward with the written-out mask over every slot, on the few-frame attention kernel (3 frames)
    and on torch's attention (40, where the decoder writes the rest out itself); a padded batch gets the full mask."""
    target = TextTarget.from_pretrained(tiny_models["llama"], fast=True)
    target.start(PROMPTS[:1], 64)
    assert target.cache.mask is None
    parents = None if shape == "chain" else torch.tensor([-1] + [t // 2 for t in range(T - 1)])  # a binary tree
    mask, positions = target.cache.lean_inputs(T, target.pos, parents, target.fast.dtype)
    written, want = target.cache.inputs(T, target.pos, parents, target.fast.dtype)  # [1, 1, T, S + T]
    assert torch.equal(positions, want)
    if shape == "chain":
        assert mask is None and positions.tolist() == [list(range(int(target.pos), int(target.pos) + T))]
    else:
        assert tuple(mask.shape) == (1, 1, T, T) and torch.equal(mask, written[..., -T:])
    embeds = target._embed(torch.arange(5, 5 + T)[None])
    kv, length = target.cache.kv, target.cache.kv.length
    lean = target.fast(embeds, positions, mask, kv)
    kv.length = length
    assert torch.equal(target.fast(embeds, positions, written, kv), lean)
    padded = TextTarget.from_pretrained(tiny_models["llama"], fast=True)
    padded.start(PROMPTS, 64)  # two prompts of different lengths: left padding
    mask, _ = padded.cache.lean_inputs(T, padded.pos, parents, padded.fast.dtype)
    assert mask is not None and mask.shape[-1] == padded.cache.length + T


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_stack_as_one_c_call_equals_the_layer_by_layer_path_bit_for_bit(tiny_models, arch):
    """``FastDecoder.whole`` (decoder.c: every layer back to back in C) makes the very kernel calls the layer-by-layer
    path makes from Python: the same hidden states and cache contents, bit for bit, for a decode frame, a causal
    chain, a tree (its own frames' mask), a padded batch (the full mask) and a row view of the cache."""
    from mmspec import skinny

    if skinny.library() is None:
        pytest.skip(f"no skinny kernels here: {skinny.reason()}")
    target = TextTarget.from_pretrained(tiny_models[arch], fast=True)
    decoder = target.fast
    assert decoder.whole is not None
    whole, calls = decoder.whole, []
    decoder.whole = lambda *args: calls.append(args[0].shape[1]) or whole(*args)
    target.start(PROMPTS, 8)  # short prompts: each row's prefill runs on it too
    calls.clear()
    target.forward(torch.tensor([[5, 6, 7], [8, 9, 10]])[..., None])
    assert calls == [3], "a verify forward of the target runs on the one call"
    decoder.whole = whole
    kv, angles = decoder.new_cache(1, 8), decoder.cos[None, :3]  # angles [1, 3, D] serve as cos and sin here
    for bad in (torch.zeros(1, 1, 2, 9), torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 2)):  # T is 3
        with pytest.raises(ValueError, match="mask"):
            whole(torch.zeros(1, 3, target.model.config.hidden_size), angles, angles, kv.keys, kv.values, 0, bad)
    layered = copy.copy(decoder)
    layered.whole = None
    torch.manual_seed(0)
    R, H, S0 = 2, target.model.config.hidden_size, 6
    parents = torch.tensor([-1, 0, 0, 1, 1])
    tree = torch.zeros(1, 1, 5, 5).masked_fill_(~mmspec.tree.ancestors(parents[None])[:, None], torch.finfo().min)
    full = torch.zeros(R, 1, 3, S0 + 3)
    full[1, :, :, :2] = torch.finfo().min  # row 1's two padding slots
    full[:, :, :, S0:] = full[:, :, :, S0:].masked_fill(~torch.ones(3, 3, dtype=torch.bool).tril(), torch.finfo().min)
    cases = [(1, None), (4, None), (5, tree), (3, full)]
    for rows in (R, 1):
        caches = []
        for path in (decoder, layered):
            cache = path.new_cache(R, 4)  # grows as the forwards need
            torch.manual_seed(1)  # the same inputs on both paths
            outs = [path(torch.randn(R, S0, H), torch.arange(S0).expand(R, S0), None, cache)]
            for T, mask in cases:
                view = cache if rows == R else cache.row(0, cache.length)
                x, positions = torch.randn(rows, T, H), torch.arange(view.length, view.length + T).expand(rows, T)
                outs.append(path(x, positions, mask if mask is None or mask.shape[0] in (1, rows) else mask[:1], view))
                if rows == 1:
                    cache.length = view.length
                cache.length -= T // 2  # roll back part of it: the next forward overwrites those slots
            caches.append((cache, outs))
        (c_cache, c_outs), (p_cache, p_outs) = caches
        assert all(torch.equal(a, b) for a, b in zip(c_outs, p_outs))
        assert c_cache.length == p_cache.length and torch.equal(c_cache.keys[:, :, :, : c_cache.length],
                                                                 p_cache.keys[:, :, :, : p_cache.length])
        assert torch.equal(c_cache.values[:, :, :, : c_cache.length], p_cache.values[:, :, :, : p_cache.length])


def test_mlp_biases_reach_the_fast_path(tiny_models):
    """A Llama with ``mlp_bias`` (gate, up and down products with biases) gives the eager forward's logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, mlp_bias=True, attention_bias=True)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1 and p.shape[0] != 32:  # the biases (not the norms' weights): clearly nonzero
                p.normal_(0, 0.5)
    decoder = fast.FastDecoder(model.model)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.inference_mode():
        want = model.model(ids).last_hidden_state
        got = decoder(model.model.embed_tokens(ids), torch.arange(5)[None], None, decoder.new_cache(1, 8))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
