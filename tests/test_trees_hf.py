"""Token trees through the Hugging Face adapters: greedy speculation over a tree equals greedy
autoregressive decoding (and HF ``generate``) token for token, for text (Llama, GPT-2), image (CFG),
the zoo speech LM and MusicGen, batch 1 and 2; and the tree mask / path keeping of ``mmspec.hf``.

The drafter is an oracle trie: it knows the target's own greedy continuation (from a first
``mmspec.autoregressive`` run) and hides it among random siblings, never as the first branch in row 0,
so every accepted node is found through the tree mask, its positions and the kept path.
"""
from __future__ import annotations

import pytest
import torch

import mmspec
from mmspec import Draft, hf, tree

PROMPTS = ["def add(a, b):", "class Stack:\n    def"]
SHAPES = [(2, 3, 1), (3, 2, 2), (2, 4, 3)]  # (width, depth, decoy branch depth)


class OracleTrieDrafter:
    """A trie of ``width`` children per node on the reference path, ``depth`` levels; each decoy sibling
    grows a random branch of ``decoy`` nodes. The reference child sits at sibling ``width - 1`` in row 0
    and ``(width - 1 - b) % width`` in row b, so rows of a batch have different parents ``[B, N]``."""

    wants_hidden = False

    def __init__(self, reference, width=2, depth=3, decoy=1, seed=0):
        self.ref, self.width, self.depth, self.decoy = reference, width, depth, decoy  # ref [B, T, K]
        self.g = torch.Generator().manual_seed(seed)

    def start(self, target, sampler, prompt, max_new_tokens):
        self.target, self.made = target, 0

    def _random(self, avoid):  # a frame [K] that differs from ``avoid`` on codebook 0
        V = self.target.vocab_size
        frame = torch.randint(0, V, avoid.shape, generator=self.g)
        frame[0] = (avoid[0].clamp(min=0) + 1 + torch.randint(0, V - 1, (1,), generator=self.g)) % V
        return frame

    def _row(self, b, d, width):
        nodes = []  # (frame [K], parent)

        def grow(parent, level):
            if level >= d:
                return
            true = self.ref[b, self.made + level] if self.made + level < self.ref.shape[1] else None
            true = self._random(torch.zeros(self.ref.shape[-1], dtype=torch.long)) if true is None or true[0] < 0 else true
            for i in range(width):
                if i == (width - 1 - b) % width:
                    nodes.append((true, parent))
                    grow(len(nodes) - 1, level + 1)
                    continue
                nodes.append((self._random(true), parent))
                for _ in range(min(self.decoy - 1, d - level - 1)):
                    nodes.append((self._random(true), len(nodes) - 1))
        grow(-1, 0)
        return nodes

    def propose(self, last, k):
        d = min(k, self.depth)
        room = self.target.max_frames - int(self.target.pos.max()) - 1
        rows = [self._row(b, d, self.width) for b in range(last.shape[0])]
        if len(rows[0]) > room:  # near the end of the context: the reference chain alone
            rows = [self._row(b, d, 1) for b in range(last.shape[0])]
        tokens = torch.stack([torch.stack([f for f, _ in r]) for r in rows]).to(last.device)  # [B, N, K]
        parents = torch.tensor([[p for _, p in r] for r in rows], device=last.device)  # [B, N]
        return Draft(tokens=tokens, parents=parents[0] if bool((parents == parents[:1]).all()) else parents)

    def observe(self, step, target_logits):
        self.made += step.frames.shape[1]


def tree_matches_greedy(target, prompt, n, shape, k=None):
    base = mmspec.autoregressive(target, prompt, max_new_tokens=n)
    width, depth, decoy = shape
    drafter = OracleTrieDrafter(base.tokens.cpu(), width, depth, decoy)
    gen = mmspec.generate(target, drafter, prompt, max_new_tokens=n, k=k or depth)
    assert torch.equal(gen.tokens, base.tokens), f"tree {shape} differs from greedy autoregressive"
    assert gen.stats["steps"] < base.stats["steps"], "the oracle tree should save forwards"
    nodes = [s.path for s in gen.steps if s.path is not None and s.path.shape[1] > 0]
    assert nodes and any(bool((p[0] > 0).any()) for p in nodes), "some accepted path leaves the first branch"
    return base


def hf_greedy(target, prompts, n):
    ids, pads = target.encode(prompts)
    mask = (torch.arange(ids.shape[1])[None, :] >= pads[:, None]).long()
    out = target.model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=1)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        rows.append(row[: row.index(0) + 1] if 0 in row else row)  # HF pads after EOS (id 0 here)
    return rows


# -- text: Llama and GPT-2, eager and sdpa, batch 1 and 2 -----------------------------------------

@pytest.mark.parametrize("arch", ["llama", "llama-eager", "gpt2"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_text_tree_is_greedy(tiny_models, arch, batch, shape):
    from mmspec.text import TextTarget

    target = TextTarget.from_pretrained(tiny_models[arch.split("-")[0]], device="cpu", fast=arch == "llama")
    assert target.forward_path == ("fast" if arch == "llama" else "eager")
    prompts = PROMPTS[:batch]  # two prompts of different lengths: left padding
    base = tree_matches_greedy(target, prompts, 24, shape)
    assert base.token_ids() == hf_greedy(target, prompts, 24)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_text_tree_under_both_attention_kernels(tiny_models, attn):
    from mmspec.text import TextTarget

    target = TextTarget.from_pretrained(tiny_models["qwen2"], device="cpu", fast=False)  # the HF kernels
    target.model.set_attn_implementation(attn)
    tree_matches_greedy(target, PROMPTS, 20, (3, 3, 2))


# -- image (CFG), speech, MusicGen ----------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 2])
def test_image_cfg_tree_is_greedy(image_models, batch):
    from builders import CLASSES, tiny_meta

    from mmspec.image import ImageTarget

    target = ImageTarget(*image_models["target"], tiny_meta(), guidance_scale=3.0, guidance_interval=(0.2, 0.7))
    tree_matches_greedy(target, CLASSES[:batch], 16, (3, 3, 2))


@pytest.mark.parametrize("batch", [1, 2])
def test_speech_tree_is_greedy(speech_folders, batch):
    from mmspec.speech import SpeechTarget

    target = SpeechTarget.from_pretrained(speech_folders["target"], device="cpu")
    prompts = ["Hello world", "Hi there, how are you"][:batch]
    base = tree_matches_greedy(target, prompts, 40, (3, 3, 2))
    assert bool(target.finished(base.tokens.clamp(min=0)).any()), "the run should reach an EOS (the end constraint)"


@pytest.mark.parametrize("batch", [1, 2])
def test_musicgen_tree_is_greedy(tokenizer, musicgen_models, batch):
    from mmspec.speech import MusicgenTarget

    target = MusicgenTarget(musicgen_models[0], tokenizer, guidance_scale=3.0)
    tree_matches_greedy(target, ["hello world", "for i in range(10)"][:batch], 12, (2, 3, 2))


def test_speech_eos_in_a_sibling_branch_does_not_constrain(speech_folders):
    """An EOS on codebook 0 in another branch is not among a node's ancestors: the node's logits equal a
    chain's that never saw it, and a node below the EOS is constrained like a chain after it."""
    from mmspec.speech import SpeechTarget

    make = lambda: SpeechTarget.from_pretrained(speech_folders["target"], device="cpu")  # noqa: E731
    target = make()
    first = target.start("Hello world", 8)
    root = first.argmax(-1)  # [1, 1, K]
    eos, code = root.clone(), root.clone()
    eos[..., 0], code[..., 0] = target.eos_id, 3
    frames = torch.cat([root, eos, eos, code, code], dim=1)  # [root, e1, e1.e2, c1, c1.c2]
    logits = target.forward(frames, torch.tensor([-1, 0, 1, 0, 3]))
    for kept in ([0, 3, 4], [0, 1, 2]):
        fresh = make()
        fresh.start("Hello world", 8)
        torch.testing.assert_close(logits[:, kept], fresh.forward(frames[:, kept]), atol=1e-4, rtol=1e-4)


# -- the base: mask and path keeping ---------------------------------------------------------------

def test_tree_mask_combines_padding_and_ancestors():
    four = type("FourCached", (), {"get_seq_length": lambda self: 4})()  # a cache holding 4 positions
    cache = hf.KVCache(mask=hf.padding_mask(torch.tensor([2, 0]), 4), kv=four)  # row 0 left-padded by 2
    parents = torch.tensor([-1, 0, 0, 2])
    mask, positions = cache.tree(parents, torch.tensor([2, 4]), torch.float32)
    assert tuple(mask.shape) == (2, 1, 4, 8) and tuple(positions.shape) == (2, 4)
    allowed = mask[:, 0] == 0  # [2, 4, 8]
    assert allowed[0, :, :2].sum() == 0 and bool(allowed[0, :, 2:4].all()) and bool(allowed[1, :, :4].all())
    assert torch.equal(allowed[0, :, 4:], tree.ancestors(parents))
    assert positions.tolist() == [[2, 3, 3, 4], [4, 5, 5, 6]]
    assert float(mask.min()) == torch.finfo(torch.float32).min


def test_keep_path_gathers_every_layer_and_both_halves():
    from transformers import DynamicCache

    kv = DynamicCache()
    keys = torch.arange(4 * 6, dtype=torch.float32).view(4, 1, 6, 1)  # R = 2B rows, 6 positions
    for layer in range(2):
        kv.update(keys.clone(), keys.clone() + 100, layer)
    cache = hf.KVCache(mask=torch.ones(4, 6, dtype=torch.long), fed=torch.arange(12).view(2, 6, 1), kv=kv)
    cache.keep_path(4, torch.tensor([[0, 3], [0, 1]]))  # the last 4 positions were a tree; rows keep 2
    for layer in kv.layers:
        assert layer.keys[:, 0, :, 0].tolist() == [[0, 1, 2, 5], [6, 7, 8, 9], [12, 13, 14, 17], [18, 19, 20, 21]]
        assert torch.equal(layer.values, layer.keys + 100)
    assert cache.fed[..., 0].tolist() == [[0, 1, 2, 5], [6, 7, 8, 9]] and tuple(cache.mask.shape) == (4, 4)
