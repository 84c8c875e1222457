"""Shared fixtures: tiny Hugging Face models built from configs and a tiny byte-level BPE tokenizer.

Nothing here touches the network: the tokenizer is trained on a few lines of code in memory and the
models are random, saved to a temporary folder and loaded back through ``from_pretrained``.
"""
from __future__ import annotations

import pytest
import torch

# Tiny models run fastest on one thread, and one thread cannot be starved by a busy second core.
torch.set_num_threads(1)

CODE = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "for i in range(10):\n    print(i)\n",
    "import os\nimport sys\n\ndef main():\n    pass\n",
    "hello world, hello again, the quick brown fox\n",
]


def make_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CODE * 4, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>", "<pad>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<pad>",
                                   bos_token="<|endoftext|>")


def make_model(arch: str, vocab: int, seed: int, layers: int = 2, hidden: int = 32):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, eos_token_id=0,
                          bos_token_id=0, pad_token_id=1)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, eos_token_id=0,
                          bos_token_id=0, pad_token_id=1)
        model = Qwen2ForCausalLM(cfg)
    else:
        cfg = GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4, n_positions=128, eos_token_id=0,
                         bos_token_id=0, pad_token_id=1)
        model = GPT2LMHeadModel(cfg)
    # Sharpen the random model so greedy text has structure (and repeats, which drafters can exploit).
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer):
    """Folders of tiny random models: {name: path}; drafts share the tokenizer (one has padded embeddings)."""
    root = tmp_path_factory.mktemp("models")
    n = len(tokenizer)
    specs = {
        "llama": ("llama", n, 0, 2), "llama-draft": ("llama", n + 20, 1, 1),  # draft with padded embeddings
        "gpt2": ("gpt2", n, 2, 2), "gpt2-draft": ("gpt2", n, 3, 1),
        "qwen2": ("qwen2", n, 4, 2),
    }
    paths = {}
    for name, (arch, vocab, seed, layers) in specs.items():
        model = make_model(arch, vocab, seed, layers)
        path = root / name
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[name] = str(path)
    return paths


# -- tiny models of the other adapters (builders in tests/builders.py), one copy per session ---------

@pytest.fixture(scope="session")
def image_models():
    from builders import tiny_image_models

    return {"target": tiny_image_models(0), "draft": tiny_image_models(1, hidden=16, layers=1)}


@pytest.fixture(scope="session")
def image_zoo(image_models, tmp_path_factory):
    """A zoo-format folder pair saved from the tiny image models (loaded back through from_pretrained)."""
    from builders import save_image_zoo

    return save_image_zoo(image_models, tmp_path_factory.mktemp("imgzoo"))


@pytest.fixture(scope="session")
def janus_models():
    from builders import tiny_janus

    return tiny_janus(0), tiny_janus(1)


@pytest.fixture(scope="session")
def speech_folders(tmp_path_factory):
    from builders import make_speech_folder

    root = tmp_path_factory.mktemp("speech")
    return {"target": str(make_speech_folder(root / "target", seed=0)),
            "draft": str(make_speech_folder(root / "draft", seed=1, layers=1, codec=False))}


@pytest.fixture(scope="session")
def musicgen_models(tokenizer):
    from builders import tiny_musicgen

    return tiny_musicgen(tokenizer, 0), tiny_musicgen(tokenizer, 1, layers=1)
