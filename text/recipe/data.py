"""`prepare`: the offline text zoo's corpus, file-level split, tokenizer and token arrays.

Everything here runs without network: the corpus is Python source that ships with every Python
(the standard library) plus, optionally, a few permissively licensed installed packages. The split is
decided per FILE by a hash of its relative path, so it is stable across machines and runs, and no
validation file ever leaks into training through a shared window.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"  # BOS, EOS and document separator
PAD = "<|pad|>"
DEFAULT_DATA = ".gpu/text"
MAX_DATA_BYTES = 30_000_000
SPECIAL_TOKENS = [EOT, PAD]

# Directory names whose content is test suites, vendored third-party code or GUI demos.
EXCLUDED_DIRS = {
    "test", "tests", "testing", "idlelib", "turtledemo", "site-packages", "dist-packages",
    "__pycache__", "_vendor", "vendor", "vendored", "encodings", "pydoc_data", "ensurepip",
    "lib-dynload", "config-3.10-x86_64-linux-gnu", "config-3.11-x86_64-linux-gnu",
    "config-3.12-x86_64-linux-gnu",
}
MAX_FILE_BYTES = 400_000   # larger files are generated tables, not code people write
MAX_LINE_CHARS = 2_000     # minified or data-like lines

# Optional extra corpus: import name -> (distribution name, license as the project states it).
# Only permissive licenses; the installed version's metadata is recorded next to it in meta.json.
PERMISSIVE_PACKAGES = {
    "numpy": ("numpy", "BSD-3-Clause"),
    "pip": ("pip", "MIT"),
    "setuptools": ("setuptools", "MIT"),
    "jinja2": ("jinja2", "BSD-3-Clause"),
    "requests": ("requests", "Apache-2.0"),
    "urllib3": ("urllib3", "MIT"),
    "click": ("click", "BSD-3-Clause"),
    "networkx": ("networkx", "BSD-3-Clause"),
    "sympy": ("sympy", "BSD-3-Clause"),
    "transformers": ("transformers", "Apache-2.0"),
    "diffusers": ("diffusers", "Apache-2.0"),
    "huggingface_hub": ("huggingface_hub", "Apache-2.0"),
    "pygments": ("pygments", "BSD-2-Clause"),
    "attr": ("attrs", "MIT"),
    "fsspec": ("fsspec", "BSD-3-Clause"),
    "idna": ("idna", "BSD-3-Clause"),
}


@dataclass(frozen=True)
class SourceFile:
    """One corpus document: where it came from and under which license."""

    rel: str        # stable id, e.g. "stdlib/json/decoder.py" or "numpy/linalg/_linalg.py"
    path: Path
    source: str     # "stdlib" or the distribution name
    license: str


def stable_hash(rel: str) -> int:
    """A 64-bit hash of a relative path that does not depend on PYTHONHASHSEED or the machine."""
    return int.from_bytes(hashlib.sha1(rel.encode("utf-8")).digest()[:8], "big")


def is_val(rel: str, val_permille: int = 40) -> bool:
    """File-level split: a file is held out iff its path hash falls in the first `val_permille`."""
    return stable_hash(rel) % 1000 < val_permille


def usable(path: Path) -> str | None:
    """Read a file, or None when it is not plain UTF-8 code of a sensible size."""
    # 1. Size filter before reading: huge files are generated tables.
    if path.stat().st_size > MAX_FILE_BYTES or path.stat().st_size == 0:
        return None
    # 2. Decode strictly; keep the text exactly (round-trip is byte exact).
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    # 3. Drop minified / data-like files.
    if any(len(line) > MAX_LINE_CHARS for line in text.splitlines()):
        return None
    return text


def _walk(root: Path, prefix: str, source: str, license: str) -> list[SourceFile]:
    """All *.py files under root, skipping excluded directories, sorted by relative id."""
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in EXCLUDED_DIRS or p.startswith("test_") for p in parts[:-1]):
            continue
        if parts[-1].startswith(("test_", "_sysconfigdata")) or parts[-1] == "conftest.py":
            continue
        files.append(SourceFile(f"{prefix}/{'/'.join(parts)}", path, source, license))
    return files


def stdlib_files() -> list[SourceFile]:
    """The standard library of the running Python, without test suites (PSF license)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return _walk(root, "stdlib", "stdlib", "PSF-2.0")


def package_files(max_bytes_per_package: int) -> tuple[list[SourceFile], dict]:
    """Files of the installed permissive packages, each capped at `max_bytes_per_package`.

    The cap keeps one big package (transformers, sympy) from dominating; which files survive the cap
    is decided by the path hash, so it is deterministic for a given installed version.
    """
    files, used = [], {}
    for name, (dist, license) in PERMISSIVE_PACKAGES.items():
        # 1. Locate the package; skip if it is not installed here.
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        # 2. Take files in hash order until the byte cap.
        cands = sorted(_walk(root, name, dist, license), key=lambda f: stable_hash(f.rel))
        total, kept = 0, []
        for f in cands:
            size = f.path.stat().st_size
            if total + size > max_bytes_per_package:
                continue
            total += size
            kept.append(f)
        files += sorted(kept, key=lambda f: f.rel)
        used[dist] = {"version": version, "license": license, "files": len(kept), "bytes": total}
    return files, used


def train_tokenizer(texts, vocab_size: int):
    """Byte-level BPE over the given texts -> a `transformers.PreTrainedTokenizerFast`.

    Byte-level pre-tokenization maps every byte to a symbol, so spaces, tabs, newlines and any unicode
    come back exactly; no normalizer and no cleanup of spaces on decode, for the same reason.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # 1. BPE model with byte-level pre-tokenizer and decoder.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # 2. Train; the full 256-byte alphabet guarantees any input is encodable.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # 3. Wrap for transformers: <|endoftext|> is BOS/EOS/UNK, a separate pad token.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=PAD,
        clean_up_tokenization_spaces=False, model_max_length=2048,
    )


def save_tokenizer(tokenizer, folder: Path) -> None:
    """save_pretrained, portable across transformers 4.x and 5.x.

    transformers 5 records its own class name (`TokenizersBackend`) and no longer writes
    special_tokens_map.json; both majors load the `PreTrainedTokenizerFast` name, so write that.
    """
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):   # loading-time flags, not tokenizer settings
        cfg.pop(key, None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": PAD}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    add_bos(folder / "tokenizer.json")


def add_bos(path: Path) -> None:
    """Make `tokenizer(text)` start with EOT, as every training document does (documents follow an EOT).

    Without it a prompt starts mid-stream and greedy completions degrade; with it, HF `generate` and
    mmspec see the same ids. Data preparation encodes with `add_special_tokens=False`, so it is unaffected.
    """
    data = json.loads(Path(path).read_text())
    bos = {"SpecialToken": {"id": EOT, "type_id": 0}}
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {EOT: {"id": EOT, "ids": [SPECIAL_TOKENS.index(EOT)], "tokens": [EOT]}},
    }
    Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def join_documents(docs_ids: list[list[int]], eot_id: int) -> np.ndarray:
    """Concatenate token lists as `EOT doc EOT doc ... EOT` into one uint16 array."""
    chunks = [np.array([eot_id], dtype=np.uint16)]
    for ids in docs_ids:
        chunks.append(np.asarray(ids, dtype=np.uint16))
        chunks.append(np.array([eot_id], dtype=np.uint16))
    return np.concatenate(chunks)


def prepare(args, files: list[SourceFile] | None = None) -> dict:
    """Collect the corpus, train the tokenizer, write train.bin / val.bin / meta.json / tokenizer/.

    `files` replaces the corpus collection (tests pass a handful of files).
    """
    t0 = time.time()
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    # 1. Corpus: stdlib, plus capped permissive packages unless disabled.
    packages = {}
    if files is None and args.package_bytes > 0:
        files = stdlib_files()
        extra, packages = package_files(args.package_bytes)
        files += extra
    files = stdlib_files() if files is None else files
    docs = [(f, text) for f in files if (text := usable(f.path)) is not None]
    print(f"[prepare] {len(docs)} usable files of {len(files)}", flush=True)
    # 2. File-level split by path hash.
    train_docs = [(f, t) for f, t in docs if not is_val(f.rel, args.val_permille)]
    val_docs = [(f, t) for f, t in docs if is_val(f.rel, args.val_permille)]
    # 3. Tokenizer on the training files only.
    tokenizer = train_tokenizer([t for _, t in train_docs], args.vocab_size)
    save_tokenizer(tokenizer, data / "tokenizer")
    eot_id = tokenizer.convert_tokens_to_ids(EOT)
    print(f"[prepare] tokenizer trained ({time.time() - t0:.0f}s)", flush=True)
    # 4. Encode; keep training files in hash order up to the token cap (deterministic subsample).
    train_docs, train_ids = _encode_capped(tokenizer, train_docs, args.max_train_tokens, eot_id)
    val_docs, val_ids = _encode_capped(tokenizer, val_docs, args.max_train_tokens // 20, eot_id)
    train_ids.tofile(data / "train.bin")
    val_ids.tofile(data / "val.bin")
    # 5. Meta: counts, file lists with their license source, what produced them.
    meta = _meta(args, tokenizer, eot_id, train_docs, val_docs, train_ids, val_ids, packages)
    meta["prepare_seconds"] = round(time.time() - t0, 1)
    (data / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    assert size < MAX_DATA_BYTES, f"{data} is {size / 1e6:.1f} MB, over {MAX_DATA_BYTES / 1e6:.0f} MB"
    print(f"[prepare] train {len(train_ids):,} tokens ({len(train_docs)} files), val {len(val_ids):,} "
          f"tokens ({len(val_docs)} files), {size / 1e6:.1f} MB, {meta['prepare_seconds']}s", flush=True)
    return meta


def _encode_capped(tokenizer, docs, max_tokens: int, eot_id: int):
    """Encode documents; keep them in path-hash order while the total stays under max_tokens.

    Returns the kept documents (sorted by path) and their `EOT doc EOT ...` uint16 array.
    """
    # 1. Batch-encode with the Rust tokenizer (parallel, no special tokens added).
    encs = tokenizer.backend_tokenizer.encode_batch([t for _, t in docs], add_special_tokens=False)
    # 2. Deterministic subsample: hash order, skip what does not fit.
    order = sorted(range(len(docs)), key=lambda i: stable_hash(docs[i][0].rel))
    kept, total = [], 0
    for i in order:
        n = len(encs[i].ids) + 1
        if total + n > max_tokens:
            continue
        kept.append(i)
        total += n
    kept.sort(key=lambda i: docs[i][0].rel)
    return [docs[i] for i in kept], join_documents([encs[i].ids for i in kept], eot_id)


def _meta(args, tokenizer, eot_id, train_docs, val_docs, train_ids, val_ids, packages) -> dict:
    """The provenance record written next to the token arrays."""
    def listing(ds):
        return [[f.rel, f.source, f.license] for f, _ in ds]

    return {
        "vocab_size": len(tokenizer), "eot_id": eot_id,
        "pad_id": tokenizer.convert_tokens_to_ids(PAD), "dtype": "uint16",
        "n_train_tokens": int(len(train_ids)), "n_val_tokens": int(len(val_ids)),
        "n_train_files": len(train_docs), "n_val_files": len(val_docs),
        "val_permille": args.val_permille, "split": "sha1(relative path) % 1000 < val_permille",
        "python": platform.python_version(),
        "sources": {"stdlib": {"license": "PSF-2.0", "version": platform.python_version()}, **packages},
        "files": {"train": listing(train_docs), "val": listing(val_docs)},
    }
