"""ToyTarget: a tiny deterministic Target for tests and for drafters' unit checks; and ``conformance``,
the suite every Target runs (a new adapter gets it with one line in ``tests/test_conformance.py``).

Its next-frame logits depend on the two previous frames through fixed random tables, so it has real
context dependence, K codebooks with parallel heads, an optional EOS, and exact rollback (its "cache"
is the list of frames it was fed). ``perturbed`` makes a draft model with a related but different
distribution.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .protocols import FrameEmbedder, HiddenTarget, OutputHead, has_hidden
from .types import PAD, check_frames


class ToyTarget:
    def __init__(
        self,
        vocab_size: int = 8,
        num_codebooks: int = 1,
        seed: int = 0,
        sharpness: float = 2.0,
        eos_id: int | None = None,
        max_frames: int = 512,
        tables: tuple[Tensor, Tensor] | None = None,
    ):
        self.vocab_size, self.num_codebooks, self.eos_id, self.max_frames = vocab_size, num_codebooks, eos_id, max_frames
        V, K = vocab_size, num_codebooks
        if tables is None:
            g = torch.Generator().manual_seed(seed)
            tables = (torch.randn(K, K, V, V, generator=g) * sharpness, torch.randn(K, K, V, V, generator=g) * sharpness / 2)
        self.w1, self.w2 = tables  # [K_prev, K, V_prev, V]: logits of codebook k from the previous frames
        self.device = torch.device("cpu")
        self.pos = torch.zeros(1, dtype=torch.long)
        self.forwards = 0

    def perturbed(self, noise: float = 1.0, seed: int = 1) -> "ToyTarget":
        g = torch.Generator().manual_seed(seed)
        w1 = self.w1 + noise * torch.randn(self.w1.shape, generator=g)
        w2 = self.w2 + noise * torch.randn(self.w2.shape, generator=g)
        return ToyTarget(self.vocab_size, self.num_codebooks, eos_id=self.eos_id, max_frames=self.max_frames, tables=(w1, w2))

    # -- Target protocol -------------------------------------------------------------------------
    def start(self, prompt: Tensor, max_new_tokens: int) -> Tensor:
        prompt = check_frames(prompt, "prompt")
        if prompt.shape[1] < 2:
            raise ValueError("ToyTarget prompts need at least 2 frames")
        if prompt.shape[1] >= self.max_frames:
            raise ValueError(f"prompt has {prompt.shape[1]} frames; the context holds {self.max_frames}")
        self.prompt = prompt
        self.history = prompt.clone()  # [B, S, K]
        self.pos = torch.full((prompt.shape[0],), prompt.shape[1], dtype=torch.long)
        self.forwards += 1
        return self._logits(self.history)[:, -1:]

    def prompt_frames(self) -> list[Tensor]:
        return list(self.prompt)

    def forward(self, frames: Tensor, parents: Tensor | None = None) -> Tensor:
        """Logits of ``frames [B, T, K]``; with ``parents [T] or [B, T]`` (a token tree) each frame reads its
        parent frame as the frame before it (-1: the newest cached frame)."""
        if bool((frames < 0).any()):  # its tables would silently read row -1: refuse PAD like a real model
            raise ValueError(f"ToyTarget was fed a negative id (PAD = {PAD})")
        B, T, K = frames.shape
        before = self.history[:, -1:].expand(B, T, K)  # [B, T, K] the frame before each frame
        if parents is not None:
            p = parents.expand(B, T) if parents.dim() == 1 else parents
            before = torch.where((p < 0)[..., None], before, frames.gather(1, p.clamp(min=0)[..., None].expand(B, T, K)))
        else:
            before = torch.cat([self.history[:, -1:], frames[:, :-1]], dim=1)
        self.history = torch.cat([self.history, frames], dim=1)
        self.pos = self.pos + T
        self.forwards += 1
        return self._table(frames, before)  # [B, T, K, V]

    def keep(self, pos: Tensor, path: Tensor | None = None) -> None:
        """Forget everything after ``pos``; with ``path [B, m]``, the last forward's frames at those indices
        stay, in order (the accepted path of a tree)."""
        n = int(pos.max())
        assert bool((pos == n).all()), "ToyTarget keeps rows aligned"
        if path is not None:
            start = n - path.shape[1]
            K = self.history.shape[-1]
            kept = self.history[:, start:].gather(1, path[..., None].expand(*path.shape, K))
            self.history = torch.cat([self.history[:, :start], kept], dim=1)
        self.history = self.history[:, :n]
        self.pos = pos.clone()

    def finished(self, frames: Tensor) -> Tensor:
        if self.eos_id is None:
            return torch.zeros(frames.shape[:2], dtype=torch.bool, device=frames.device)
        return frames[..., 0] == self.eos_id

    def decode(self, frames: Tensor, lengths: Tensor) -> list:
        return [frames[b, : int(lengths[b])].tolist() for b in range(frames.shape[0])]

    def check_draft(self, draft) -> None:
        if not isinstance(draft, ToyTarget) or draft.vocab_size != self.vocab_size:
            raise ValueError("a ToyTarget drafts for a ToyTarget of the same vocabulary")

    # -- the model -------------------------------------------------------------------------------
    def _logits(self, history: Tensor) -> Tensor:
        """Logits predicting frame t + 1 from frames t and t - 1: ``[B, S, K, V]``."""
        return self._table(history, torch.cat([history[:, :1], history[:, :-1]], dim=1))

    def _table(self, prev1: Tensor, prev2: Tensor) -> Tensor:
        """Logits of the frame after ``prev1 [B, S, K]`` whose own predecessor is ``prev2``: ``[B, S, K, V]``."""
        out = 0
        for j in range(self.num_codebooks):
            out = out + self.w1[j][:, prev1[..., j]].permute(1, 2, 0, 3) + self.w2[j][:, prev2[..., j]].permute(1, 2, 0, 3)
        return out  # [B, S, K, V]

    def distribution(self, prefix: Tensor, n: int) -> dict[tuple, float]:
        """Exact probability of every n-frame continuation of ``prefix [1, S, K]`` (small V, K, n only)."""
        import itertools

        probs = {(): 1.0}
        for _ in range(n):
            nxt = {}
            for seq, pr in probs.items():
                hist = torch.cat([prefix, torch.tensor(seq, dtype=torch.long).reshape(1, -1, self.num_codebooks)], 1)
                p = torch.softmax(self._logits(hist)[0, -1], -1)  # [K, V]
                for frame in itertools.product(range(self.vocab_size), repeat=self.num_codebooks):
                    pf = float(torch.prod(p[torch.arange(self.num_codebooks), torch.tensor(frame)]))
                    nxt[seq + (frame,)] = pr * pf
            probs = nxt
        return probs


def chi2_pvalue(counts, probs: dict, runs: int) -> float:
    """Pearson chi-square goodness of fit of ``counts`` (outcome -> n) to exact ``probs`` over ``runs``
    samples; outcomes expected fewer than 5 times are pooled into one bin. Returns the p-value."""
    stat, dof, pooled_obs, pooled_exp = 0.0, -1, 0.0, 0.0
    for outcome, pr in probs.items():
        e, o = pr * runs, counts.get(outcome, 0)
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + o, pooled_exp + e
            continue
        stat, dof = stat + (o - e) ** 2 / e, dof + 1
    if pooled_exp > 0:
        stat, dof = stat + (pooled_obs - pooled_exp) ** 2 / pooled_exp, dof + 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), torch.tensor(stat / 2.0, dtype=torch.float64)))


# -- the conformance suite every Target runs ----------------------------------------------------------

def conformance(make_target: Callable[[], Any], prompts: Sequence, *, draft: Callable[[], Any] | None = None,
                join: Callable[[list], Any] = list, frames: int = 5, budget: int = 12, atol: float = 1e-4,
                unguided: Callable[[], Any] | None = None) -> None:
    """Check a Target against the contract in ``mmspec.protocols``; raises AssertionError (or the first
    error) on a violation.

    ``make_target()`` builds a fresh target (the rollback check compares with a fresh prefill);
    ``prompts``: at least two single prompts (ideally of different lengths), each a batch of one;
    ``join(prompts)`` makes them one batch (a list by default); ``draft()`` builds a valid draft target.
    ``frames`` new frames per forward and a run ``budget`` keep it fast on tiny models. A target with the
    hidden-state capability (``HiddenTarget``) also runs ``check_hidden``; ``unguided()`` builds the same
    model with guidance off (default: ``make_target``), whose forward's logits are its output head's.
    """
    import mmspec

    target = make_target()
    if has_hidden(target):
        check_hidden(target, unguided or make_target, join(list(prompts[:2])), frames, budget, atol)
    check_shapes(target, join(list(prompts[:2])), frames, budget)
    check_keep(make_target, prompts[0], frames, budget, atol)
    for shared in (True, False):
        check_tree(make_target, join(list(prompts[:2])), budget, atol, shared=shared)
    if getattr(target, "per_row_commits", False):
        check_rows_apart(make_target, prompts[:2], join, frames, budget, atol)
    if getattr(target, "selects_rows", False):
        check_select_rows(make_target, prompts[:2], join, frames, budget, atol)
    with NoPad():  # 1. every model and decoder call below sees no PAD id
        both = mmspec.autoregressive(target, join(list(prompts[:2])), max_new_tokens=budget)
        check_rows_alone(target, prompts[:2], both, budget)
        check_unfinished_decode(target, join(list(prompts[:2])), both)
        drafter = mmspec.JacobiDrafter("random") if draft is None else mmspec.ModelDrafter(draft())
        spec = mmspec.generate(target, drafter, join(list(prompts[:2])), max_new_tokens=budget, k=3)
        assert torch.equal(spec.tokens, both.tokens), "greedy speculation differs from greedy autoregressive"
    ended = target.finished(both.tokens.clamp(min=0))
    assert ended.dtype == torch.bool and tuple(ended.shape) == tuple(both.tokens.shape[:2]), "finished: BoolTensor [B, T]"
    check_refuses_wrong_drafts(target, draft)


def check_hidden(target, make_unguided, prompt, T: int, budget: int, atol: float) -> None:
    """The ``HiddenTarget`` contract: ``hidden()`` is ``[B, T, H]`` for exactly the frames a call returned logits
    for (the prefill: its last frame; a guided target: its conditional rows), unchanged by ``keep``, absent
    when recording is off; ``output_head()`` of it gives the logits the same model returns with guidance
    off (``make_unguided()``; entries the adapter constrains, -inf, and columns the head never predicts,
    its lowest finite value, are the adapter's); ``input_embeddings()`` maps ``[B, T, K]`` to ``[B, T, E]``."""
    assert isinstance(target, HiddenTarget) and isinstance(target.hidden_wanted, bool), "declare hidden_wanted"
    head, embed = target.output_head(), target.input_embeddings()
    assert isinstance(head, OutputHead) and isinstance(embed, FrameEmbedder), "output_head / input_embeddings types"
    target.track_hidden(False)
    target.start(prompt, budget)
    _refuses_hidden(target, "with recording off")
    target.track_hidden(True)
    assert target.hidden_wanted, "track_hidden(True) must set hidden_wanted"
    first = target.start(prompt, budget)
    B, H = first.shape[0], head.hidden_size
    states = [target.hidden()]
    assert tuple(states[0].shape) == (B, 1, H), f"the prefill records [B, 1, H], got {tuple(states[0].shape)}"
    frames = sample_frames(target, first, T, seed=3)  # [B, T, K]
    target.forward(frames)
    states.append(target.hidden())
    assert tuple(states[1].shape) == (B, T, H), f"hidden() is {tuple(states[1].shape)}, want ({B}, {T}, {H})"
    target.keep(target.pos - T + 1)
    assert torch.equal(target.hidden(), states[1]), "keep must leave hidden() as the last forward recorded it"
    assert tuple(embed(frames).shape) == (B, T, embed.embed_size), "input_embeddings: [B, T, K] -> [B, T, E]"
    target.track_hidden(False)
    plain = make_unguided()
    for state, logits in zip(states, [plain.start(prompt, budget), plain.forward(frames)]):
        _head_gives(head, state, logits, atol)


def _refuses_hidden(target, when: str) -> None:
    try:
        target.hidden()
    except ValueError:
        return
    raise AssertionError(f"hidden() must raise ValueError {when}")


def _head_gives(head, hidden: Tensor, logits: Tensor, atol: float) -> None:
    """``head(hidden)`` equals ``logits [B, T, K, V]`` wherever the adapter left them the head's."""
    with torch.inference_mode():
        mine = head(hidden).float()  # [B, T, K * V]
    B, T, K, V = logits.shape
    mine = mine.view(B, T, K, V)
    theirs = mine > torch.finfo(mine.dtype).min  # a column the head never predicts is the adapter's
    compared = logits.isfinite() & theirs
    assert compared.float().mean() > 0.3, "too few logits left to compare with the output head"
    error = float((mine - logits.float())[compared].abs().max())
    assert error <= atol, f"output_head(hidden()) differs from the unguided forward's logits by {error:.3g}"


def check_shapes(target, prompt, T: int, budget: int) -> None:
    """``start`` -> ``[B, 1, K, V]``, ``forward`` -> ``[B, T, K, V]`` with ``pos += T``, ``keep`` sets
    ``pos``; ``prompt_frames()`` is one ``[L_b, K]`` LongTensor per row; ``device`` is a torch.device."""
    K, V = target.num_codebooks, target.vocab_size
    logits = target.start(prompt, budget)
    B = logits.shape[0]
    assert tuple(logits.shape) == (B, 1, K, V), f"start returned {tuple(logits.shape)}, want (B, 1, {K}, {V})"
    assert isinstance(target.device, torch.device) and logits.device.type == target.device.type
    assert tuple(target.pos.shape) == (B,) and target.pos.dtype == torch.long, "pos must be a LongTensor [B]"
    rows = target.prompt_frames()
    assert isinstance(rows, list) and len(rows) == B, "prompt_frames() must be a list with one tensor per row"
    for row in rows:
        assert row.dtype == torch.long and row.dim() == 2 and row.shape[1] == K, f"prompt frame {tuple(row.shape)}"
    p0 = target.pos.clone()
    out = target.forward(sample_frames(target, logits, T, seed=0))
    assert tuple(out.shape) == (B, T, K, V), f"forward returned {tuple(out.shape)}, want ({B}, {T}, {K}, {V})"
    assert torch.equal(target.pos, p0 + T), "forward must advance pos by T"
    target.keep(p0 + 1)
    assert torch.equal(target.pos, p0 + 1), "keep must set pos"


def check_keep(make_target, prompt, T: int, budget: int, atol: float) -> None:
    """Forward some frames, roll back, forward others: the logits equal a fresh prefill's (a partial
    rollback inside a block keeps its accepted prefix)."""
    scout = make_target()
    b = sample_frames(scout, scout.start(prompt, budget), T, seed=2)  # [B, T, K], valid after the prompt
    fresh = make_target()
    want_first = fresh.start(prompt, budget)
    want = fresh.forward(b)  # [B, T, K, V]
    target = make_target()
    got_first = target.start(prompt, budget)
    torch.testing.assert_close(got_first, want_first, atol=atol, rtol=atol)
    p0 = target.pos.clone()
    target.forward(sample_frames(target, got_first, T, seed=1))  # frames a (forwarded one by one)
    target.keep(p0)
    torch.testing.assert_close(target.forward(b), want, atol=atol, rtol=atol, msg="rollback != fresh prefill")
    target.keep(p0 + 1)
    torch.testing.assert_close(target.forward(b[:, 1:]), want[:, 1:], atol=atol, rtol=atol,
                               msg="partial rollback != fresh prefill")


# A tree of three branches after the root x0 (the first frame of the forward): (branch, depth) per node.
TREE = [("y", 1), ("y", 2), ("w", 1), ("x", 1), ("x", 2), ("y", 3)]
TREE_ROW = [("x", 1), ("w", 1), ("y", 1), ("x", 2), ("y", 2), ("y", 3)]  # another order, for per-row parents


def _tree_layout(order) -> tuple[list[int], dict]:
    """Parents over the forward's frames ``[x0, nodes...]`` and each (branch, depth)'s frame index."""
    index = {node: i + 1 for i, node in enumerate(order)}
    parents = [-1] + [index[(b, d - 1)] if d > 1 else 0 for b, d in order]
    return parents, index


def _tree_branches(target, prompt, budget: int) -> tuple[Tensor, dict]:
    """The root ``x0 [B, 1, K]`` and three branches of 3 frames after it, each valid where it stands."""
    first = target.start(prompt, budget)
    x = sample_frames(target, first, 4, seed=11)  # [B, 4, K]: x0 and branch x
    after = target.forward(x[:, :1])
    branches = {"x": x[:, 1:], "y": sample_frames(target, after, 3, seed=12), "w": sample_frames(target, after, 3, seed=13)}
    target.keep(target.pos - 1)
    return x[:, :1], branches


def check_tree(make_target, prompt, budget: int, atol: float, shared: bool = True) -> None:
    """Forward a token tree, keep one path per row, then one more frame: the logits of the kept frames and
    of the next frame equal a fresh prefill's fed the path as a chain. Row 0 keeps branch x (not the first
    branch), row 1 branch y; ``shared``: one ``parents [T]`` for the batch, else ``[B, T]`` (row 1 in
    another order). A batch of one keeps branch x."""
    root, branches = _tree_branches(make_target(), prompt, budget)
    B = root.shape[0]
    orders = [TREE if shared or b == 0 else TREE_ROW for b in range(B)]
    keeps = ["x" if b == 0 else "y" for b in range(B)]
    rows, parents, paths = [], [], []
    for b, (order, keep) in enumerate(zip(orders, keeps)):
        par, index = _tree_layout(order)
        rows.append(torch.cat([root[b]] + [branches[br][b, d - 1: d] for br, d in order]))  # [T, K]
        parents.append(par)
        paths.append([0, index[(keep, 1)], index[(keep, 2)]])
    frames, path = torch.stack(rows), torch.tensor(paths, device=root.device)  # [B, T, K], [B, 3]
    parents = torch.tensor(parents[0] if shared else parents, device=root.device)  # [T] or [B, T]
    target = make_target()
    target.start(prompt, budget)
    p0 = target.pos.clone()
    logits = target.forward(frames, parents)  # [B, T, K, V]
    target.keep(p0 + 3, path)
    kept = frames.gather(1, path[..., None].expand(B, 3, frames.shape[-1]))  # [B, 3, K]
    fresh = make_target()
    fresh.start(prompt, budget)
    want = fresh.forward(kept)
    got = logits.gather(1, path[..., None, None].expand(B, 3, *logits.shape[2:]))
    torch.testing.assert_close(got, want, atol=atol, rtol=atol, msg="tree logits of the kept path != a chain's")
    assert torch.equal(target.pos, fresh.pos), "keep(pos, path) must set pos"
    nxt = want[:, -1:].argmax(-1)  # [B, 1, K]
    torch.testing.assert_close(target.forward(nxt), fresh.forward(nxt), atol=atol, rtol=atol,
                               msg="after keep(path) the next forward != a fresh prefill of prefix + path")


def check_rows_apart(make_target, prompts: Sequence, join: Callable[[list], Any], T: int, budget: int,
                     atol: float) -> None:
    """A target that declares ``per_row_commits``: after ``keep`` leaves its two rows at different positions
    (row 0 keeps 1 frame of a forward, row 1 keeps T - 1), the next forward's logits of each row equal that row's
    alone (the shorter row's rejected slots are hidden, positions stay per row)."""
    target = make_target()
    first = target.start(join(list(prompts)), budget)
    p0 = target.pos.clone()
    a = sample_frames(target, first, T, seed=4)  # [2, T, K]
    target.forward(a)
    kept = torch.tensor([1, T - 1], device=p0.device)
    target.keep(p0 + kept)
    b = sample_frames(target, target.forward(a[:, -1:]), T, seed=5)  # [2, T, K] after each row's own frames
    got = target.forward(b)  # [2, T, K, V]
    for i, prompt in enumerate(prompts):
        alone = make_target()
        alone.start(prompt, budget)
        alone.forward(a[i:i + 1, : int(kept[i])])
        alone.forward(a[i:i + 1, -1:])
        torch.testing.assert_close(got[i:i + 1], alone.forward(b[i:i + 1]), atol=atol, rtol=atol,
                                   msg=f"row {i} at its own position differs from the row alone")


def check_select_rows(make_target, prompts: Sequence, join: Callable[[list], Any], T: int, budget: int,
                      atol: float) -> None:
    """A target that declares ``selects_rows``: with its two rows apart (row 0 keeps 1 frame of a forward, row 1
    keeps T - 1), ``select_rows([1])`` leaves row 1 alone in the batch, at its own ``pos``, and its next forwards'
    logits equal that row's decoded alone (its cache, holes and positions went with it)."""
    target = make_target()
    first = target.start(join(list(prompts)), budget)
    p0 = target.pos.clone()
    a = sample_frames(target, first, T, seed=4)  # [2, T, K]
    target.forward(a)
    target.keep(p0 + torch.tensor([1, T - 1], device=p0.device))
    target.select_rows(torch.tensor([1], device=p0.device))
    assert torch.equal(target.pos, p0[1:] + T - 1), "select_rows must keep the kept rows' pos"
    b = sample_frames(target, target.forward(a[1:, -1:]), T, seed=5)  # [1, T, K]
    alone = make_target()
    alone.start(prompts[1], budget)
    alone.forward(a[1:, : T - 1])
    alone.forward(a[1:, -1:])
    torch.testing.assert_close(target.forward(b), alone.forward(b), atol=atol, rtol=atol,
                               msg="the row kept by select_rows differs from the row alone")


def check_rows_alone(target, prompts: Sequence, both, budget: int) -> None:
    """Each row of a greedy batch equals that prompt run alone (padding never leaks into a row)."""
    import mmspec

    for i, prompt in enumerate(prompts):
        one = mmspec.autoregressive(target, prompt, max_new_tokens=budget)
        n = int(one.lengths[0])
        assert int(both.lengths[i]) == n, f"row {i}: {int(both.lengths[i])} frames in the batch, {n} alone"
        assert torch.equal(both.tokens[i, :n], one.tokens[0, :n]), f"row {i} differs from its prompt alone"


def check_unfinished_decode(target, prompt, both) -> None:
    """Decoding a run cut by ``max_new_tokens`` works, and so does a row cut short (PAD after its length)."""
    import mmspec

    short = mmspec.autoregressive(target, prompt, max_new_tokens=2)  # decoded inside generate
    assert len(short.outputs) == short.tokens.shape[0]
    tokens, lengths = both.tokens.clone(), both.lengths.clone()
    lengths[-1] = max(1, int(lengths[-1]) // 2)
    tokens[-1, int(lengths[-1]):] = PAD
    assert len(target.decode(tokens, lengths)) == tokens.shape[0]


def check_refuses_wrong_drafts(target, draft=None) -> None:
    """``check_draft`` refuses an object of the wrong kind with ValueError (and accepts ``draft()``)."""
    wrong = [object()] + ([] if isinstance(target, ToyTarget) else [ToyTarget(vocab_size=target.vocab_size)])
    for other in wrong:
        try:
            target.check_draft(other)
        except ValueError:
            continue
        raise AssertionError(f"check_draft accepted a {type(other).__name__}")
    if draft is not None:
        target.check_draft(draft())


def sample_frames(target, logits: Tensor, T: int, seed: int) -> Tensor:
    """``T`` frames ``[B, T, K]`` sampled from the target's own (constrained) logits, fed one by one, so
    every frame is valid where it stands; the target ends ``T - 1`` frames past where it began."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(T):
        B, _, K, V = logits.shape
        probs = torch.softmax(logits[:, -1].float().cpu(), dim=-1).reshape(B * K, V)  # [B * K, V]
        out.append(torch.multinomial(probs, 1, generator=g).view(B, 1, K).to(logits.device))
        if t < T - 1:
            logits = target.forward(out[-1])
    if T > 1:
        target.keep(target.pos - (T - 1))  # leave the target where it began
    return torch.cat(out, dim=1)


class NoPad(TorchFunctionMode):
    """Inside ``with NoPad():`` every embedding lookup (token embeddings, the code tables of quantizing
    decoders) refuses a negative id, so PAD (-1) cannot reach a model or a decoder unnoticed (a negative
    index elsewhere would silently read the last row)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.embedding:
            ids = args[0] if args else kwargs["input"]
            if ids.numel() and int(ids.min()) < 0:
                raise AssertionError(f"a negative id (PAD = {PAD}) reached an embedding lookup")
        return func(*args, **kwargs)


class CountedTarget:
    """A Target that counts its verify work, for tests and machine-independent benchmarks: it wraps ``target``
    (every attribute and method is the wrapped target's) and records the frames ``[B, T, K]`` of each ``forward``
    call in ``shapes`` as ``(B, T)`` (the prefill is not among them: ``start``)."""

    def __init__(self, target):
        self.wrapped, self.shapes = target, []

    def __getattr__(self, name: str):
        return getattr(self.wrapped, name)

    def forward(self, frames: Tensor, parents: Tensor | None = None) -> Tensor:
        self.shapes.append((int(frames.shape[0]), int(frames.shape[1])))
        return self.wrapped.forward(frames, parents)

    def start(self, prompt, max_new_tokens: int) -> Tensor:
        self.shapes = []
        return self.wrapped.start(prompt, max_new_tokens)

    @property
    def rows_frames(self) -> int:
        """The sum over forwards of rows x frames scored (a guided adapter runs each row twice inside)."""
        return sum(B * T for B, T in self.shapes)
