"""What the self-drafters share (``MedusaDrafter`` in ``medusa.py``, ``EagleDrafter`` in ``eagle.py``).

A self-drafter reads the target's own last hidden state (``HiddenTarget.hidden``) from the verify forward
that the loop already ran, never a second pass: after ``keep``, the state of the newest committed frame's
predecessor is the verify frame of the last committed node (a chain: frame ``n - 1``; a tree: the frame of
the last committed path node; the first step: the prefill's last frame). Its tokens are read through the
target's frozen output head. Under greedy rules a draft is the argmax (q = None); under sampling rules it
is sampled and q is kept (chains), so the rules, which verify with the target's own distribution, stay exact.
On a CPU the head is read with int8 weights (``Int8Head``), optionally on a reduced vocabulary
(``DraftVocab``): both change only the guesses, never what the target accepts.
"""
from __future__ import annotations

import weakref

import torch
from torch import Tensor

from ..protocols import Target, has_hidden
from ..sampling import Sampler
from ..types import Step
from .eagle import EagleDrafter
from .medusa import MedusaDrafter

__all__ = ["MedusaDrafter", "EagleDrafter", "attach", "committed_states", "choose"]


def attach(drafter, target: Target, sampler: Sampler, hidden_size: int) -> None:
    """Shared ``start`` checks: the target has the hidden-state capability, its size matches the heads,
    and the loop turned recording on before the prefill."""
    if not has_hidden(target):
        raise ValueError(f"{type(target).__name__} does not expose its hidden states (track_hidden / hidden / "
                         "output_head / input_embeddings), so self-drafters cannot run on it")
    if not target.hidden_wanted:
        raise ValueError("the target recorded no hidden state during its prefill: generate through mmspec.stream "
                         "(it turns recording on for a drafter with wants_hidden), or call track_hidden(True) first")
    size = target.hidden().shape[-1]
    if size != hidden_size:
        raise ValueError(f"these heads were built for hidden size {hidden_size}, the target's is {size}")
    drafter.target, drafter.sampler = target, sampler
    head = target.output_head()
    vocab = getattr(drafter, "vocab", None)
    if vocab is not None:
        if target.num_codebooks != 1 or int(vocab.max()) >= target.vocab_size:
            raise ValueError(f"a draft vocabulary needs a single-codebook target with ids below {target.vocab_size}")
        head = DraftVocab(head, vocab.to(target.device), target.vocab_size)
    drafter.head = head
    if target.device.type == "cpu" and vocab is not None:
        drafter.head = Int8Head.of(head)
    elif target.device.type == "cpu":  # the target's own head is quantized once, not in every run
        key = ("int8", getattr(head, "start", 0), getattr(head, "size", None))
        fast = made_once(getattr(head, "linear", head), key, lambda: _int8_only(head))
        drafter.head = head if fast is None else fast  # None: no int8 kernel here, read the head itself


def _int8_only(head: torch.nn.Module) -> "Int8Head | None":
    """The int8 copy of ``head``, or None (never ``head`` itself, which a cache must not hold on to)."""
    fast = Int8Head.of(head)
    return fast if isinstance(fast, Int8Head) else None


_MADE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> {key: (weight versions, made)}


def made_once(owner: torch.nn.Module, key, make):
    """``make()`` (a derived copy of ``owner``, e.g. its int8 weights) once per ``owner`` and ``key``, and again
    only when ``owner``'s weights have changed since (in-place updates bump their versions)."""
    version = tuple(p._version for p in owner.parameters())
    entries = _MADE.setdefault(owner, {})
    if key not in entries or entries[key][0] != version:
        entries[key] = (version, make())
    return entries[key][1]


class Int8Head(torch.nn.Module):
    """A CPU copy of a linear map (an output head, or a drafter's own layer) with int8 weights, one scale per
    row, applied to bfloat16 activations: on a CPU these small products are bound by the bytes of their
    weights, and this reads a quarter of them. A drafter only guesses; the target verifies with its own
    full-precision weights, so output stays exact (a guess that rounding changed is just rejected).
    ``of`` returns the module itself where the kernel is missing or the module is not a plain linear map."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        super().__init__()
        if weight.shape[1] % 16:  # torch's CPU kernel crashes (a segfault, not an error) on other widths
            raise ValueError(f"the int8 kernel needs an input size divisible by 16, got {weight.shape[1]}")
        w = weight.detach().float()
        scales = (w.abs().amax(1) / 127).clamp(min=1e-12)  # [V]
        self.q = (w / scales[:, None]).round().clamp(-127, 127).to(torch.int8).contiguous()  # [V, H]
        self.scales = scales.to(torch.bfloat16)
        self.bias = None if bias is None else bias.detach().float()
        self.anchor = torch.nn.Parameter(torch.zeros(0, dtype=torch.float32), requires_grad=False)  # dtype probe

    @classmethod
    def of(cls, head: torch.nn.Module) -> torch.nn.Module:
        if isinstance(head, DraftVocab):
            head.sub = cls.of(head.sub)
            return head
        inner = getattr(head, "linear", head)  # a target's Projection wraps its linear head
        weight = getattr(head, "weight", None)
        if weight is None or weight.dim() != 2 or not isinstance(inner, torch.nn.Linear) or \
                (inner is not head and inner.bias is not None):  # a sliced head's bias: keep it exact and simple
            return head
        try:
            fast = cls(weight, inner.bias if inner is head else None)
            fast(torch.zeros(1, weight.shape[1]))  # the kernel exists on this build
        except (RuntimeError, AttributeError, ValueError):
            return head
        return fast

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = torch._weight_int8pack_mm(flat, self.q, self.scales).float().reshape(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


def int8_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` layers are ``Int8Head`` maps (for drafting on a CPU)."""
    import copy

    out = copy.deepcopy(module)
    for name, child in list(out.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, torch.nn.Linear):
                setattr(child, attr, Int8Head.of(sub))
    return out


class DraftVocab(torch.nn.Module):
    """The target's output head read on a subset of its vocabulary (EAGLE-3's reduced draft vocabulary):
    logits ``[..., V]`` with -inf outside ``rows``. The drafter can only guess those tokens (the most
    frequent ones of its training data), at a fraction of the cost of the full head on a CPU; the target's
    verification is untouched, so output stays exact and only acceptance can drop."""

    def __init__(self, head: torch.nn.Module, rows: Tensor, vocab_size: int):
        super().__init__()
        self.rows, self.V = rows, vocab_size
        inner = getattr(head, "linear", head)
        if isinstance(inner, torch.nn.Linear) and inner.bias is None:  # the head's rows: a smaller linear map
            self.sub = torch.nn.Linear(head.weight.shape[1], len(rows), bias=False).to(head.weight)
            self.sub.weight.data = head.weight.detach()[rows].contiguous()  # [Vd, H]
        else:  # any other head (an MLP, a biased map): run it whole and keep the rows
            self.sub = _Rows(head, rows)

    def forward(self, x: Tensor) -> Tensor:
        small = self.sub(x.float())  # [..., Vd]
        full = small.new_full((*small.shape[:-1], self.V), float("-inf"))
        return full.index_copy_(-1, self.rows, small)


class _Rows(torch.nn.Module):
    """``head(x)[..., rows]``: a draft vocabulary of a head that is not one linear map."""

    def __init__(self, head: torch.nn.Module, rows: Tensor):
        super().__init__()
        self.head, self.rows = head, rows

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x).index_select(-1, self.rows)


def committed_states(target, step: Step) -> Tensor:
    """The verify forward's hidden states of the committed frames' predecessors, ``[B, n, H]``: entry j is the
    state whose output head gave committed frame j (the last entry: the state before the newest frame)."""
    h = target.hidden()  # [B, T, H] of the last forward (the prefill: T = 1)
    n = step.frames.shape[1]
    if step.path is None:
        return h[:, :n]
    index = torch.cat([step.path.new_zeros(step.path.shape[0], 1), step.path.clamp(min=0) + 1], dim=1)  # [B, n]
    return h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))


def read(head, x: Tensor, K: int) -> Tensor:
    """Logits ``[B, T, K, V]`` (float32) of features ``x [B, T, H]`` through the target's output head."""
    weight = next(head.parameters())
    logits = head(x.to(weight.dtype)).float()  # [B, T, K * V]
    return logits.view(*logits.shape[:-1], K, -1)


def choose(sampler: Sampler, logits: Tensor, pos: Tensor) -> tuple[Tensor, Tensor | None]:
    """Draft frames from ``logits [B, T, K, V]`` at positions ``pos [B]`` (first frame): tokens ``[B, T, K]``
    and the distribution they were sampled from (None: deterministic: greedy, or keyed noise)."""
    if sampler.greedy:
        return logits.argmax(-1), None
    if sampler.keyed:  # the target's own keyed noise: Gumbel coupling; that rule needs no q
        return sampler.keyed_choice(logits, pos), None
    q = sampler.probs(logits)
    return sampler.sample(q), q
