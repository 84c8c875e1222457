"""Skinny products on a CPU: ``y = x W^T + b`` for the few rows of a decode or verify forward, float32.

The kernel (``mmspec/csrc/skinny.c``, read its header for the layout) is compiled at first use with the system C
compiler for the machine it runs on and cached under ``~/.cache/mmspec/kernels``, keyed by the source, the
compiler and the CPU. Measured on the development CPU (AMD EPYC, 2 vCPUs, AVX-512; BENCHMARKS.md
"Session 9", ``benchmarks/skinny_probe.py``): the text zoo target's products take 2.3-3.1 ms for 1-9 rows against
oneDNN's prepacked 3.6-4.4 ms. A call can also fold in the elementwise work a decoder layer does around a product
(RMSNorm, the SiLU gate, the residual, rotary angles: ``SkinnyWeight``), which as torch operations cost about a
sixth of a one-frame forward (BENCHMARKS.md "Session 10"). ``EagleStep`` runs an EAGLE drafting layer's whole step
(``csrc/eagle.c``) in one call: in a decode loop the torch operations between its kernels cost as much as the kernels
(BENCHMARKS.md "Session 11"). ``Decoder`` runs a float32 Llama-family decoder stack's decode or verify forward in one
call (``csrc/decoder.c``): run layer by layer from Python, the calls and tensor operations between the kernels cost
about as much as the products of a one-frame forward (BENCHMARKS.md "Session 13").

It is used only where it was measured (x86-64 Linux with AVX-512) and where its OpenMP calls resolve to the runtime
torch already uses; elsewhere, or without a compiler, ``library()`` returns None, ``reason()`` says why, and the fast
path keeps oneDNN's products. Nothing here changes a model's weights: ``SkinnyWeight`` holds its own copy.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCES = tuple(Path(__file__).with_name("csrc") / name for name in ("skinny.c", "attend.c", "eagle.c", "decoder.c"))
HEADERS = (Path(__file__).with_name("csrc") / "vecmath.h",)  # read by the sources: part of the build's key
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
PANEL = 16  # outputs per column panel (one 64-byte vector of float32)

_state: dict = {}  # "lib": the loaded library or None, "why": the reason it is None


def library():
    """The loaded kernel library (built on first use), or None where it is not used (``reason()`` says why)."""
    if "lib" not in _state:
        try:
            _state["lib"], _state["why"] = _load(), None
        except _Unavailable as err:
            _state["lib"], _state["why"] = None, str(err)
        except (OSError, subprocess.SubprocessError) as err:  # an unwritable cache, a compiler that hangs
            _state["lib"], _state["why"] = None, f"the skinny kernel could not be built or loaded: {err}"
    return _state["lib"]


def reason() -> str | None:
    """Why ``library()`` is None (None when it is loaded)."""
    library()
    return _state["why"]


class _Unavailable(Exception):
    pass


def _load():
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise _Unavailable(f"the skinny kernel is built and measured on x86-64 Linux only, not {platform.machine()}")
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        raise _Unavailable("the skinny kernel is measured with AVX-512 only; this CPU's products stay on oneDNN")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise _Unavailable("no C compiler (cc or gcc) to build the skinny kernel")
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(source + version.encode() + _cpu().encode() + " ".join(FLAGS).encode()).hexdigest()[:16]
    folder = Path.home() / ".cache" / "mmspec" / "kernels"
    built = folder / f"skinny-{key}.so"
    if not built.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # built aside, then renamed: a concurrent build is harmless
            out = Path(tmp) / built.name
            run = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", str(out)], capture_output=True, text=True,
                                 timeout=120)
            if run.returncode != 0:
                raise _Unavailable(f"building the skinny kernel failed: {run.stderr.strip()[:300]}")
            os.replace(out, built)
    omp_before = _openmp_runtimes()
    lib = ctypes.CDLL(str(built))
    omp_after = _openmp_runtimes()
    if omp_after - omp_before or len(omp_after) > 1:
        raise _Unavailable("the skinny kernel would run on a second OpenMP runtime beside torch's")
    pointer, head = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_int]
    tail = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_long] + [ctypes.c_int] * 3
    kernels = {}
    for name, weights in (("mmspec_skinny", [pointer] * 5), ("mmspec_skinny_int8", [pointer] * 6)):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = head + weights + tail, None
        kernels[name] = fn
    attend = lib.mmspec_attend
    stride = [ctypes.c_long]
    attend.argtypes = ((([pointer] + stride * 3) * 3) + [pointer] + stride * 2 + [ctypes.c_int, pointer]
                       + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int])
    attend.restype = None
    norm = lib.mmspec_rms_norm
    norm.argtypes, norm.restype = [pointer, pointer, ctypes.c_float, pointer, ctypes.c_long, ctypes.c_int], None
    eagle = lib.mmspec_eagle_step
    eagle.argtypes = ([pointer] * 3 + [ctypes.c_long] + [pointer] * 2 + [ctypes.c_int] + [pointer] * 2 + [ctypes.c_int]
                      + [pointer] * 2 + [ctypes.c_long] + [pointer] * 6 + [ctypes.c_int] * 4)
    eagle.restype = ctypes.c_int
    chain = lib.mmspec_eagle_chain
    i32, i64 = ctypes.c_int, ctypes.c_long
    chain.argtypes = [pointer, pointer, i32, pointer, i32, i32, pointer, pointer, i64] + [pointer] * 4 + [i64] + [
        pointer] * 3 + [i32] * 3 + [ctypes.c_float, pointer, i32]
    chain.restype = ctypes.c_int
    decoder = lib.mmspec_decoder
    decoder.argtypes = ([pointer, i32] + [pointer] * 5 + [i64, i64, i32, i32, pointer, i64, i64, i32, pointer,
                                                          ctypes.c_float, pointer] + [i32] * 8)
    decoder.restype = None
    return _Kernels(kernels["mmspec_skinny"], kernels["mmspec_skinny_int8"], attend, norm, eagle, chain, decoder)


class _Kernels:
    """The library's entry points: products on float32 weights (``product``) and on int8 weights with per-output
    scales (``product_int8``), few-frame attention (``attend``), RMSNorm (``rms_norm``), an EAGLE drafting layer's
    step on int8 weights and its greedy chain (``eagle_step``, ``eagle_chain``: ``EagleStep``), a float32 decoder
    stack's forward over a static cache (``decoder``: ``Decoder``)."""

    def __init__(self, product, product_int8, attend, rms_norm, eagle_step, eagle_chain, decoder):
        self.product, self.product_int8, self.attend, self.rms_norm = product, product_int8, attend, rms_norm
        self.eagle_step, self.eagle_chain, self.decoder = eagle_step, eagle_chain, decoder


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _openmp_runtimes() -> set[str]:
    """Paths of the OpenMP runtimes mapped into this process."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    names = ("libgomp", "libiomp", "libomp")
    return {line.split()[-1] for line in maps if any(n in line.rsplit("/", 1)[-1] for n in names)}


class SkinnyWeight:
    """``weight [out, in]`` (float32, CPU) stored in column panels of 16 outputs ``[ceil(out / 16), in, 16]``, and
    its ``bias [out]`` or None; calling it on ``x [M, in]`` returns ``x W^T + b`` ``[M, out]``.

    The call can fold in the elementwise work a decoder layer does around its products, so it costs no torch
    operations: ``norm=(weight [in], eps)`` applies RMSNorm to each row of x first; ``gated=True`` takes
    ``x [M, 2 in]`` as [gate | up] and multiplies by ``silu(gate) * up``; ``residual [M, out]`` is added to the
    result; or ``rope=(cos [M, D], sin [M, D], heads)`` turns the first ``heads`` groups of D outputs of each row
    by those rotary angles (the rotate-half convention). Each row's arithmetic is the same whatever rows run with
    it."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None):
        if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2:
            raise ValueError(f"SkinnyWeight takes a 2-D float32 CPU weight, got {weight.dtype} {tuple(weight.shape)} "
                             f"on {weight.device}")
        self._set(weight, bias, None)

    @classmethod
    def int8(cls, weight: Tensor, scales: Tensor, bias: Tensor | None = None) -> "SkinnyWeight":
        """Int8 weights ``[out, in]`` with one float scale per output ``[out]`` (``x W^T * scales + b``): a drafter's
        copy (``mmspec.drafters.int8``), a quarter of the bytes to stream."""
        if weight.dtype != torch.int8 or weight.device.type != "cpu" or weight.dim() != 2:
            raise ValueError(f"SkinnyWeight.int8 takes a 2-D int8 CPU weight, got {weight.dtype} {tuple(weight.shape)}")
        if tuple(scales.shape) != (weight.shape[0],):
            raise ValueError(f"SkinnyWeight.int8 takes one scale per output, got {tuple(scales.shape)}")
        made = cls.__new__(cls)
        made._set(weight, bias, scales)
        return made

    def _set(self, weight: Tensor, bias: Tensor | None, scales: Tensor | None) -> None:
        self.out_features, self.in_features = weight.shape
        panels = -(-self.out_features // PANEL)
        padded = weight.new_zeros(panels * PANEL, self.in_features)
        padded[: self.out_features] = weight.detach()
        self.panels = padded.view(panels, PANEL, self.in_features).transpose(1, 2).contiguous()
        self.scales = None
        if scales is not None:
            self.scales = torch.ones(panels * PANEL, dtype=torch.float32)
            self.scales[: self.out_features] = scales.detach().float()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self._call = None  # the kernel for these weights, found at the first call

    def __getstate__(self) -> dict:  # copies and pickles hold the weights; the kernel is looked up again
        return {**self.__dict__, "_call": None}

    def __call__(self, x: Tensor, norm: tuple[Tensor, float] | None = None, gated: bool = False,
                 residual: Tensor | None = None, rope: tuple[Tensor, Tensor, int] | None = None
                 ) -> Tensor:  # [M, in] (gated: [M, 2 in]) -> [M, out]
        # lean on purpose: a drafted frame makes six of these calls, a forward of the text zoo target 33
        width = self.in_features * (2 if gated else 1)
        if x.dim() != 2 or x.shape[1] != width or (norm is not None and gated) or (rope is not None and residual is not None):
            raise ValueError(f"SkinnyWeight takes rows of {width} features{' (gate | up)' if gated else ''}, at "
                             f"most one of norm and gated and at most one of residual and rope, got {tuple(x.shape)}")
        x = _ready(x)  # the kernel reads float32 rows in order
        M = x.shape[0]
        y = torch.empty(M, self.out_features, dtype=torch.float32)
        weight, eps = (None, 0.0) if norm is None else (_ready(norm[0]).data_ptr(), float(norm[1]))
        add = None
        if residual is not None:
            if residual.shape != y.shape:
                raise ValueError(f"residual {tuple(residual.shape)} must be the output's shape {tuple(y.shape)}")
            residual = _ready(residual)
            add = residual.data_ptr()
        cos = sin = None
        turned = width_of_head = 0
        if rope is not None:
            cos, sin, turned = rope
            width_of_head = cos.shape[-1]
            if (tuple(cos.shape) != (M, width_of_head) or cos.shape != sin.shape or width_of_head % 2
                    or not 0 <= turned * width_of_head <= self.out_features):
                raise ValueError(f"rope takes cos and sin [{M}, D] (D even) and at most "
                                 f"{self.out_features} // D heads, got {tuple(cos.shape)}, {tuple(sin.shape)}, {turned}")
            cos, sin = _ready(cos), _ready(sin)
        if self._call is None:
            kernels = library()
            self._call = kernels.product if self.scales is None else kernels.product_int8
        weights = (self.panels.data_ptr(),) + (() if self.scales is None else (self.scales.data_ptr(),)) + (
            None if self.bias is None else self.bias.data_ptr(),)
        self._call(x.data_ptr(), weight, eps, int(gated), *weights, add, None if cos is None else cos.data_ptr(),
                   None if sin is None else sin.data_ptr(), turned, width_of_head, y.data_ptr(), M, self.in_features,
                   self.out_features, torch.get_num_threads())
        return y


def _ready(t: Tensor) -> Tensor:
    """``t`` as the kernels read it: float32, contiguous (itself when it already is)."""
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.to(torch.float32).contiguous()


def attend(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    """Attention of ``q [R, Hq, T, D]`` over ``keys``/``values [R, Hkv, S, D]`` (Hq a multiple of Hkv, D <= 256) with
    an additive ``mask [R or 1, 1, T, W]`` over the last W slots, T <= W <= S (entries at the dtype's minimum hide a
    key; earlier slots are all visible: W = T is a tree's own frames over a cache without holes) or None (query t sees
    keys up to S - T + t) -> ``[R, T, Hq * D]``, float32 on a CPU, by ``attend.c`` (read its header: a query's result
    is bit-identical whatever other queries run with it). The last dimension of every input must be contiguous; other
    strides are read as they are."""
    R, Hq, T, D = q.shape
    Hkv, S = keys.shape[1], keys.shape[2]
    tensors = [q, keys, values] + ([] if mask is None else [mask])
    if any(t.dtype != torch.float32 or t.device.type != "cpu" or t.stride(-1) != 1 for t in tensors):
        raise ValueError("attend takes float32 CPU tensors whose last dimension is contiguous")
    if D > 256 or keys.shape != values.shape or keys.shape[0] != R or keys.shape[3] != D or Hq % Hkv:
        raise ValueError(f"attend: q {tuple(q.shape)}, keys {tuple(keys.shape)} and values {tuple(values.shape)} must "
                         "agree in rows and features (at most 256), with a query head count that the key heads divide")
    W = S if mask is None else mask.shape[-1]
    if mask is not None and (mask.shape[-2] != T or not T <= W <= S or mask.shape[0] not in (1, R)):
        raise ValueError(f"attend: mask {tuple(mask.shape)} must be [{R} or 1, 1, {T}, W] with {T} <= W <= {S}")
    out = torch.empty(R, T, Hq, D, dtype=torch.float32)
    mr, mt = (0, 0) if mask is None else (mask.stride(0) if mask.shape[0] > 1 else 0, mask.stride(-2))
    library().attend(q.data_ptr(), q.stride(0), q.stride(1), q.stride(2), keys.data_ptr(), keys.stride(0),
                     keys.stride(1), keys.stride(2), values.data_ptr(), values.stride(0), values.stride(1),
                     values.stride(2), None if mask is None else mask.data_ptr(), mr, mt, W, out.data_ptr(), R, T, Hq,
                     Hkv, S, D, scale, torch.get_num_threads())
    return out.view(R, T, Hq * D)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last dimension of ``x [..., H]`` (float32, CPU) with ``weight [H]``, row by row as the product
    kernel's ``norm`` option does it (one C call instead of torch's composite of several operations)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(f"rms_norm takes float32 CPU rows and a weight of their width, got {x.dtype} "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    x, weight = _ready(x), _ready(weight)
    y = torch.empty_like(x)
    library().rms_norm(x.data_ptr(), weight.data_ptr(), float(eps), y.data_ptr(), x.numel() // x.shape[-1], x.shape[-1])
    return y


class _Product(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("sc", ctypes.c_void_p), ("b", ctypes.c_void_p)]


def _product(weight: "SkinnyWeight") -> _Product:
    """eagle.c's view of an int8 ``SkinnyWeight``: its panels, scales and bias."""
    return _Product(weight.panels.data_ptr(), weight.scales.data_ptr(),
                    None if weight.bias is None else weight.bias.data_ptr())


class _Layer(ctypes.Structure):  # eagle.c's Layer
    _fields_ = ([(name, _Product) for name in ("fc", "qkv", "o", "gate_up", "down")]
                + [("norm0", ctypes.c_void_p), ("norm1", ctypes.c_void_p), ("eps0", ctypes.c_float),
                   ("eps1", ctypes.c_float), ("scale", ctypes.c_float)]
                + [(name, ctypes.c_int) for name in ("H", "E", "heads", "D", "I", "embed_first")])


class EagleStep:
    """An EAGLE layer's step as one call of ``eagle.c`` (read its header): ``products`` the int8 ``SkinnyWeight``
    maps ``(fc, qkv, o, gate_up, down)`` (q/k/v and gate/up side by side), ``norms`` the two RMSNorms ``(weight,
    eps)`` or None, ``heads`` attention heads of ``head_dim`` features, ``scale`` the attention scale, and whether
    ``fc`` reads [embedding, feature] (``embed_first``) or [feature, embedding]. Holds the tensors it points at."""

    def __init__(self, products, norms, heads: int, head_dim: int, scale: float, embed_first: bool):
        fc, qkv, o, gate_up, down = products
        if any(p.scales is None for p in products) or qkv.out_features != 3 * heads * head_dim:
            raise ValueError("EagleStep takes int8 products fc, qkv (3 x heads x head_dim outputs), o, gate_up, down")
        H, I = fc.out_features, down.in_features
        norms = [None if n is None else (_ready(n[0]), float(n[1])) for n in norms]
        self._keep = (products, norms)
        self.layer = _Layer(*map(_product, products), *[None if n is None else n[0].data_ptr() for n in norms],
                            *[0.0 if n is None else n[1] for n in norms], float(scale), H, fc.in_features - H, heads,
                            head_dim, I, int(embed_first))
        self.H, self.E, self.heads, self.head_dim = H, fc.in_features - H, heads, head_dim

    def __call__(self, feats: Tensor, positions: Tensor, tables: tuple[Tensor, Tensor], keys: Tensor, values: Tensor,
                 mask: Tensor | None, emb: Tensor | None = None, table: Tensor | None = None,
                 frames: Tensor | None = None, offsets: Tensor | None = None):
        """New pairs ``feats [B, T, H]`` with their embeddings ``emb [B, T, E]``, or their frames ``[B, T, K]`` looked up
        in ``table [*, E]`` at ``offsets [K]`` (int64) and summed, at ``positions [B or 1, T]`` (int64) of the rotary
        ``tables`` (cos, sin ``[P, D]``), after ``keys``/``values [B, heads, S, D]``; ``mask`` an additive ``[B, T, S +
        T]`` or None (pair t sees the cached slots and the new pairs up to itself). Returns ``(out [B, T, H], keys,
        values [B, heads, S + T, D])``, or None when a position is outside the tables; ValueError when a frame's row is
        outside ``table``."""
        B, T, H = feats.shape
        S, h, D = keys.shape[2], self.heads, self.head_dim
        if (H != self.H or tuple(keys.shape) != (B, h, S, D) or keys.shape != values.shape
                or positions.shape[-1] != T or positions.shape[0] not in (1, B)
                or (emb is None) == (table is None) or (emb is not None and tuple(emb.shape) != (B, T, self.E))
                or (table is not None and (frames.shape[:2] != (B, T) or frames.shape[-1] != offsets.shape[0]
                                           or table.shape[1] != self.E))
                or (mask is not None and tuple(mask.shape) != (B, T, S + T))):
            raise ValueError(f"EagleStep: feats [B, T, {self.H}], keys and values [B, {h}, S, {D}], positions [B or 1, "
                             f"T], emb [B, T, {self.E}] or frames [B, T, K] with K offsets into a table [*, {self.E}], "
                             "mask [B, T, S + T] or None")
        feats, keys, values = _ready(feats), _ready(keys), _ready(values)
        positions = positions.to(torch.long).contiguous()
        frames = None if frames is None else frames.to(torch.long).contiguous()
        grown = [torch.empty(B, h, S + T, D, dtype=torch.float32) for _ in range(2)]
        out = torch.empty(B, T, H, dtype=torch.float32)
        K = 0 if frames is None else frames.shape[-1]
        code = library().eagle_step(
            ctypes.byref(self.layer), feats.data_ptr(), None if table is None else table.data_ptr(),
            0 if table is None else table.shape[0], None if frames is None else frames.data_ptr(),
            None if offsets is None else offsets.data_ptr(), K,
            None if emb is None else _ready(emb).data_ptr(), positions.data_ptr(), int(positions.shape[0] > 1),
            tables[0].data_ptr(), tables[1].data_ptr(), tables[0].shape[0], keys.data_ptr(), values.data_ptr(),
            grown[0].data_ptr(), grown[1].data_ptr(), None if mask is None else mask.data_ptr(), out.data_ptr(), B, T, S,
            torch.get_num_threads())
        if code == -2:
            raise ValueError(f"EagleStep: a frame's embedding row is outside the table of {table.shape[0]} rows")
        return None if code else (out, grown[0], grown[1])

    def chain(self, head, n: int, feat: Tensor, first: Tensor, tables: tuple[Tensor, Tensor], keys: Tensor,
              values: Tensor, valid: Tensor | None, table: Tensor, offsets: Tensor, K: int, V: int,
              rows: Tensor | None = None, confidence: float = 0.0) -> Tensor | None:
        """A greedy chain of ``n`` frames (``eagle.c``, ``mmspec_eagle_chain``): each round reads a frame from the newest
        feature (``feat [B, H]`` first) through ``head`` (an int8 ``SkinnyWeight`` of K codebooks x V ids, or of a draft
        vocabulary whose ids are ``rows``, K = 1), the argmax per codebook, then steps the layer on that pair at position
        ``first [B] + round`` after ``keys``/``values [B, heads, S, D]`` (``valid [B, S]``: the slots a row holds, or
        None: all). From the second round on the chain ends before a frame whose top probability (the least over its
        codebooks) is below ``confidence`` in every row. The embedding: ``table`` at ``offsets``. Returns frames ``[B,
        m, K]`` (int64, 1 <= m <= n), or None when a position is outside the rotary ``tables``."""
        B, S = feat.shape[0], keys.shape[2]
        if (tuple(feat.shape) != (B, self.H) or tuple(keys.shape) != (B, self.heads, S, self.head_dim)
                or keys.shape != values.shape or tuple(first.shape) != (B,) or offsets.shape[0] != K
                or table.shape[1] != self.E or (valid is not None and tuple(valid.shape) != (B, S))):
            raise ValueError(f"EagleStep.chain: feat [B, {self.H}], keys and values [B, {self.heads}, S, "
                             f"{self.head_dim}], first [B], K offsets into a table [*, {self.E}], valid [B, S] or None")
        if head.scales is None or head.in_features != self.H:
            raise ValueError(f"a chain reads an int8 head of {self.H} inputs")
        if head.out_features != (K * V if rows is None else rows.shape[0]) or (rows is not None and K != 1):
            raise ValueError(f"a chain's head gives K x V = {K} x {V} logits, or one per draft-vocabulary id (K = 1); "
                             f"this one gives {head.out_features}")
        feat, keys, values = _ready(feat), _ready(keys), _ready(values)
        first = first.to(torch.long).contiguous()
        valid = None if valid is None else valid.to(torch.uint8).contiguous()
        rows = None if rows is None else rows.to(torch.long).contiguous()
        product = _product(head)
        frames = torch.empty(B, n, K, dtype=torch.long)
        code = library().eagle_chain(
            ctypes.byref(self.layer), ctypes.byref(product), head.out_features, None if rows is None else rows.data_ptr(),
            K, V, feat.data_ptr(), table.data_ptr(), table.shape[0], offsets.data_ptr(), first.data_ptr(),
            tables[0].data_ptr(), tables[1].data_ptr(), tables[0].shape[0], keys.data_ptr(), values.data_ptr(),
            None if valid is None else valid.data_ptr(), B, S, n, float(confidence), frames.data_ptr(),
            torch.get_num_threads())
        if code == -2:
            raise ValueError(f"EagleStep.chain: {K} codebooks of {V} ids do not fit an embedding table of "
                             f"{table.shape[0]} rows")
        return None if code < 0 else frames[:, :code]


class _DecoderLayer(ctypes.Structure):  # decoder.c's DecoderLayer
    _fields_ = ([(name, ctypes.c_void_p) for name in ("qkv", "qkv_b", "o", "o_b", "gate_up", "gate_up_b", "down",
                                                      "down_b", "norm0", "norm1")]
                + [(name, ctypes.c_float) for name in ("eps0", "eps1", "scale")])


class Decoder:
    """A Llama-family decoder stack's forward as one call of ``decoder.c`` (read its header): ``layers`` one
    ``(qkv, o, gate_up, down, norms, scale)`` per decoder layer, the products float32 ``SkinnyWeight`` (q/k/v and gate/up
    side by side), ``norms`` the input and post-attention RMSNorms ``((weight, eps), (weight, eps))``; ``heads`` and
    ``kv_heads`` attention heads of ``head_dim`` features; ``norm`` the final RMSNorm ``(weight, eps)``. Holds the
    tensors it points at. Each step is the kernel call the layer-by-layer path makes, so the result is bit-identical."""

    def __init__(self, layers, heads: int, kv_heads: int, head_dim: int, norm: tuple[Tensor, float]):
        structs = []
        keep = []
        for qkv, o, gate_up, down, norms, scale in layers:
            products = (qkv, o, gate_up, down)
            if any(p.scales is not None for p in products):
                raise ValueError("Decoder takes float32 products")
            weights = [_ready(n[0]) for n in norms]
            keep += [products, weights]
            pointers = []
            for p in products:
                pointers += [p.panels.data_ptr(), None if p.bias is None else p.bias.data_ptr()]
            structs.append(_DecoderLayer(*pointers, *[w.data_ptr() for w in weights], *[float(n[1]) for n in norms],
                                         float(scale)))
        qkv, o, gate_up, down = layers[0][:4]
        shapes = {tuple((p.out_features, p.in_features) for p in layer[:4]) for layer in layers}
        if len(shapes) > 1:
            raise ValueError(f"Decoder: every layer's products must have the same shapes, got {sorted(shapes)}")
        self.H, self.inter = o.out_features, down.in_features
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        if (qkv.out_features != (heads + 2 * kv_heads) * head_dim or o.in_features != heads * head_dim
                or gate_up.out_features != 2 * self.inter or head_dim > 256 or head_dim % 2):
            raise ValueError("Decoder: q/k/v must give (heads + 2 kv_heads) x head_dim outputs (head_dim even, at most "
                             "256), o read heads x head_dim, gate/up give twice down's inputs")
        self.norm = (_ready(norm[0]), float(norm[1]))
        self.layers = (_DecoderLayer * len(structs))(*structs)
        self._keep = keep

    def __call__(self, x: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, values: Tensor, length: int,
                 mask: Tensor | None) -> Tensor:
        """``x [R, T, H]`` at rotary angles ``cos``/``sin [R, T, D]``; ``keys``/``values [L, R, Hkv, slots, D]`` (a static
        cache's buffers, room for T more slots after ``length``; the new frames' keys and values are written there);
        ``mask`` as ``attend`` takes it over the ``length + T`` slots, or None (the causal tail) -> the final-norm
        hidden state ``[R, T, H]``."""
        R, T, H = x.shape
        L, D = len(self.layers), self.head_dim
        slots = keys.shape[3]
        if (H != self.H or tuple(cos.shape) != (R, T, D) or cos.shape != sin.shape
                or tuple(keys.shape) != (L, R, self.kv_heads, slots, D) or keys.stride() != values.stride()
                or keys.stride()[2:] != (slots * D, D, 1) or length + T > slots):
            raise ValueError(f"Decoder: x [R, T, {self.H}], cos and sin [R, T, {D}], keys and values [{L}, R, "
                             f"{self.kv_heads}, slots, {D}] with room for T slots after {length}")
        tensors = [x, cos, sin, keys, values] + ([] if mask is None else [mask])
        if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
            raise ValueError("Decoder takes float32 CPU tensors")
        S = length + T
        W = S if mask is None else mask.shape[-1]
        if mask is not None and (mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2] != T or not T <= W <= S
                                 or mask.shape[0] not in (1, R) or mask.stride(-1) != 1):
            raise ValueError(f"Decoder: mask {tuple(mask.shape)} must be [{R} or 1, 1, {T}, W] with {T} <= W <= {S}")
        x, cos, sin = _ready(x), _ready(cos), _ready(sin)
        mr, mt = (0, 0) if mask is None else (mask.stride(0) if mask.shape[0] > 1 else 0, mask.stride(-2))
        out = torch.empty(R, T, H, dtype=torch.float32)
        weight, eps = self.norm
        library().decoder(self.layers, L, x.data_ptr(), cos.data_ptr(), sin.data_ptr(), keys.data_ptr(),
                          values.data_ptr(), keys.stride(0), keys.stride(1), slots, length,
                          None if mask is None else mask.data_ptr(), mr, mt, W, weight.data_ptr(), eps, out.data_ptr(),
                          R, T, H, self.heads, self.kv_heads, D, self.inter, torch.get_num_threads())
        return out
