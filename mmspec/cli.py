"""The ``mmspec`` command: generate, compare, bench, zoo, demo.

User mistakes (bad values, unknown names, missing models) exit with code 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from . import accept
from . import methods as named
from . import modalities
from .types import Sampling

EXAMPLES = """examples:
  mmspec generate --drafter prompt-lookup --prompt "def fibonacci(n):"
  mmspec compare --modality speech --methods model,codec-lookup --repeats 3
  mmspec bench --suite text --quick --out bench-out"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", default="text", help=f"one of: {', '.join(modalities.names())}")
    p.add_argument("--target", default=None, help="hub name, local path or zoo:NAME (default: the modality's zoo model)")
    p.add_argument("--draft", default=None, help="draft model for --drafter model (default: the modality's zoo draft)")
    p.add_argument("--prompt", default=None, help="the prompt (default: the modality's first example)")
    p.add_argument("--k", type=int, default=4, help="drafted frames per step (Jacobi window); a frame is one token, "
                   "one image code or one step of all codebooks")
    p.add_argument("--init", default="random", help="Jacobi/lookahead init: pad, random, repeat, or a modality's own")
    p.add_argument("--ngram", type=int, default=None,
                   help="n-gram length N: prompt lookup matches the last N..1 frames (default 3), lookahead keeps "
                        "N-grams (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="new frames per row (tokens, image codes or codec steps; default: the modality's)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default=None, help="output file (text .txt, image .png, speech .wav); a batch is numbered")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="mmspec", description="Speculative decoding for text, image and speech models",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate with one method", formatter_class=fmt)
    _common(gen)
    gen.add_argument("--drafter", default="none", help="none, model, prompt-lookup, jacobi, lookahead, or a modality's "
                     "own (speech: codec-lookup)")
    gen.add_argument("--rule", default=None, help="greedy, speculative, reproducible, typical, or a modality's own "
                     "(image: lantern; speech: relaxed) (default: greedy at temperature 0, else speculative)")
    cmp_ = sub.add_parser("compare", help="baseline and several methods on the same prompt", formatter_class=fmt)
    _common(cmp_)
    cmp_.add_argument("--methods", default="prompt-lookup,jacobi,lookahead,model",
                      help="comma-separated drafter[:rule] list, e.g. model:speculative,jacobi")
    bench = sub.add_parser("bench", help="benchmark suites (see BENCHMARKS.md)", formatter_class=fmt)
    bench.add_argument("--suite", default="text", help=f"one of: {', '.join(modalities.names())}, or all")
    bench.add_argument("--out", default="bench-out")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--target", default=None, help="target model (default: the suite modality's zoo model)")
    bench.add_argument("--draft", default=None, help="draft model for the model drafter (default: the zoo draft)")
    bench.add_argument("--repeats", type=int, default=None, help="timed runs per prompt (default 3, --quick 1)")
    bench.add_argument("--prompts", type=int, default=None, help="number of prompts (default: the suite's)")
    bench.add_argument("--prompt", action="append", default=None,
                       help="use this prompt instead of the suite's prompt set (repeat for several)")
    bench.add_argument("--max-new-tokens", type=int, default=None, help="frames per prompt (default: the suite's)")
    bench.add_argument("--k", type=int, default=None, help="drafted frames per step (default: the suite's)")
    bench.add_argument("--methods", default=None, help="comma-separated method labels or drafter names to keep")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--device", default=None, help="cpu or cuda (default: the adapter's)")
    bench.add_argument("--dtype", default=None, help="model dtype (default: the adapter's)")
    bench.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    zoo = sub.add_parser("zoo", add_help=False,  # --help goes to the recipe: `mmspec zoo train text --help`
                         help="train the offline zoo models (`mmspec zoo ACTION MODALITY --help` for options)")
    zoo.add_argument("action", choices=["train", "evaluate", "prepare", "distill"],
                     help="distill (text, speech): retrain the draft against the finished target")
    zoo.add_argument("zoo_modality", metavar="modality", help="text, image or speech")
    demo = sub.add_parser("demo", help="start the Gradio app", formatter_class=fmt)
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", action="store_true")
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    demo.add_argument("--model", action="append", default=[], metavar="MODALITY=NAME_OR_PATH",
                      help="also serve this model in the app (repeatable); by default only each modality's zoo pair")
    demo.add_argument("--allow-any-model", action="store_true",
                      help="let any folder path or hub id typed into the app load (local use only; off by default)")
    return parser


def _parse(argv: list[str] | None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("generate", "compare"):
        modality = modalities.get(args.modality)
        sub = argparse.ArgumentParser(prog=f"mmspec {args.command} --modality {args.modality}", add_help=False)
        modality.add_arguments(sub)
        extra, unknown = sub.parse_known_args(rest)
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        vars(args).update(vars(extra))
        return args, modality, rest
    return args, None, rest


def _sampling(args) -> Sampling:
    return Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def _check(args, modality, drafters: list[str], rules: list[str]) -> None:
    """Every user value checked before any model loads."""
    for name in ("k", "batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    _sampling(args)
    modality.prompts(args.prompt if args.prompt is not None else modality.default_prompt, 1)
    for drafter in drafters:
        named.check_drafter(drafter, modality, init=args.init, ngram=args.ngram)
    for rule in rules:
        accept.spec_of(rule, modality.rules)
    if args.out:
        from .files import writable

        writable(args.out)


def run_method(modality, target, drafter: str, rule: str, args, draft=None):
    """One generation with a named drafter and rule; returns the Generation."""
    return named.run(modality, target, args.prompt, drafter=drafter, rule=rule, draft=draft, batch=args.batch,
                     k=args.k, init=args.init, ngram=args.ngram, max_new_tokens=args.max_new_tokens,
                     sampling=_sampling(args), seed=args.seed, options=modality.options(args))


def _load(modality, args, need_draft: bool):
    opts = modality.options(args)
    target = modality.load(args.target or modality.default_target, **opts)
    draft = modality.load(args.draft or modality.default_draft, **opts) if need_draft else None
    return target, draft


def cmd_generate(args, modality) -> int:
    rule = args.rule or named.default_rule(args.temperature)
    _check(args, modality, [args.drafter], [rule])
    target, draft = _load(modality, args, args.drafter == "model")
    gen = run_method(modality, target, args.drafter, rule, args, draft=draft)
    files = gen.save(args.out) if args.out else []
    stats = {k: v for k, v in gen.stats.items() if k != "accepted_per_step"}
    spec = accept.spec_of(rule, modality.rules)
    if args.json:
        outputs = [o if isinstance(o, str) else repr(o) for o in gen.outputs]
        print(json.dumps({"outputs": outputs, "token_ids": gen.token_ids(), "stats": stats, "files": files,
                          "method": named.label(args.drafter, rule), "lossless": spec.lossless, "bound": spec.bound,
                          "sampling": vars(_sampling(args))}))
        return 0
    for i, out in enumerate(gen.outputs):
        shown = files[i] if files else f"{out!r} (use --out FILE{modality.extension} to save it)"
        print(out if isinstance(out, str) else shown)
    print(f"\n[{named.label(args.drafter, rule)}] {stats['new_tokens']} {modality.unit} in {stats['wall_s']:.2f}s "
          f"({stats['tokens_per_s']:.1f}/s), mean accepted {stats['mean_accepted']:.2f}, "
          f"acceptance {stats['acceptance_rate']:.2f}", file=sys.stderr)
    return 0


def _methods(args, modality) -> list[tuple[str, str]]:
    out = []
    for item in [m.strip() for m in args.methods.split(",") if m.strip()]:
        drafter, _, rule = item.partition(":")
        out.append((drafter, rule or named.default_rule(args.temperature)))
    return out


def cmd_compare(args, modality) -> int:
    methods = _methods(args, modality)
    _check(args, modality, [d for d, _ in methods], [r for _, r in methods])
    target, draft = _load(modality, args, any(d == "model" for d, _ in methods))
    keyed = any(r == "reproducible" for _, r in methods)
    base_rule = "greedy" if args.temperature == 0 else ("reproducible" if keyed else "speculative")
    run_method(modality, target, "none", base_rule, args)  # warm-up
    base = run_method(modality, target, "none", base_rule, args)
    rows = [("none", base_rule, base)]
    for drafter, rule in methods:
        run_method(modality, target, drafter, rule, args, draft=draft)  # warm-up
        rows.append((drafter, rule, run_method(modality, target, drafter, rule, args, draft=draft)))
    table = []
    for drafter, rule, gen in rows:
        s = gen.stats
        table.append({
            "method": named.label(drafter, rule), "lossless": accept.spec_of(rule, modality.rules).lossless,
            "identical_to_baseline": gen.token_ids() == base.token_ids(),
            "wall_s": s["wall_s"], "tokens_per_s": s["tokens_per_s"], "speedup": base.stats["wall_s"] / s["wall_s"],
            "mean_accepted": s["mean_accepted"], "acceptance_rate": s["acceptance_rate"], "steps": s["steps"],
            "new_tokens": s["new_tokens"],
        })
    if args.json:
        print(json.dumps({"rows": table}))
    else:
        head = f"{'method':28} {'wall_s':>8} {'tok/s':>8} {'speedup':>8} {'accepted':>9} {'acc.rate':>9} {'same':>5}"
        print(head)
        for r in table:
            print(f"{r['method']:28} {r['wall_s']:8.3f} {r['tokens_per_s']:8.1f} {r['speedup']:8.2f} "
                  f"{r['mean_accepted']:9.2f} {r['acceptance_rate']:9.2f} {str(r['identical_to_baseline']):>5}")
    return 0


def cmd_zoo(args, rest) -> int:
    """The modality package's own training recipe (``mmspec.<modality>.recipe.main``)."""
    modalities.get(args.zoo_modality)  # unknown names -> ValueError listing the registered ones
    try:
        recipe = importlib.import_module(f"mmspec.{args.zoo_modality}.recipe")
    except ModuleNotFoundError:
        raise ValueError(f"modality {args.zoo_modality!r} ships no zoo recipe") from None
    try:
        return recipe.main([args.action, *rest]) or 0
    except SystemExit as stop:  # the recipe's own argument errors and --help
        return stop.code if isinstance(stop.code, int) else 0


def cmd_bench(args, rest) -> int:
    from . import bench

    return bench.main(args, rest) or 0


def cmd_demo(args, rest) -> int:
    from mmspec.demos import app

    return app.main(args) or 0


def main(argv: list[str] | None = None) -> int:
    try:
        args, modality, rest = _parse(argv)
        if args.command == "generate":
            return cmd_generate(args, modality)
        if args.command == "compare":
            return cmd_compare(args, modality)
        if args.command == "zoo":
            return cmd_zoo(args, rest)
        if rest:
            build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "bench":
            return cmd_bench(args, rest)
        return cmd_demo(args, rest)
    except ValueError as err:
        print(f"mmspec: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
