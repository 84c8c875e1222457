"""The ``mmspec`` command: generate, compare, bench, zoo, demo.

User mistakes (bad values, unknown names, missing models) exit with code 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys


from .methods import check_rule, is_lossless, make_drafter, make_rule, method_label
from .types import Sampling

MODALITIES = ("text", "image", "speech")


def modality_api(name: str):
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {name!r}; allowed: {', '.join(MODALITIES)}")
    return importlib.import_module(f"mmspec.{name}.api")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", default="text", help="text, image or speech")
    p.add_argument("--target", default=None, help="hub name, local path or zoo:NAME (default: the modality's zoo model)")
    p.add_argument("--draft", default=None, help="draft model for --drafter model (default: the zoo draft)")
    p.add_argument("--prompt", default=None, help="text prompt (image: a class name such as 'red ring')")
    p.add_argument("--k", type=int, default=4, help="drafted frames per step (Jacobi window)")
    p.add_argument("--init", default="random", help="Jacobi/lookahead init: pad, random, repeat (+ modality ones)")
    p.add_argument("--ngram", type=int, default=3, help="prompt lookup: longest n-gram matched")
    p.add_argument("--max-new-tokens", type=int, default=None, help="new tokens (frames) per row")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--out", default=None, help="output file (image .png, speech .wav, text .txt)")
    p.add_argument("--json", action="store_true", help="print one JSON object")



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmspec", description="Speculative decoding for text, image and speech models")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate with one method")
    _common(gen)
    gen.add_argument("--drafter", default="none", help="none, model, prompt-lookup, jacobi, lookahead")
    gen.add_argument("--rule", default=None, help="greedy, speculative, reproducible, typical, or a modality's own "
                     "(image: lantern; speech: relaxed) (default: greedy at temperature 0, else speculative)")
    cmp_ = sub.add_parser("compare", help="baseline and several methods on the same prompt")
    _common(cmp_)
    cmp_.add_argument("--methods", default="prompt-lookup,jacobi,lookahead,model",
                      help="comma-separated drafter[:rule] list, e.g. model:speculative,jacobi")
    bench = sub.add_parser("bench", help="benchmark suites (see BENCHMARKS.md)")
    bench.add_argument("--suite", default="text", help="text, image, speech or all")
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
    zoo = sub.add_parser("zoo", help="train the offline zoo models")
    zoo.add_argument("action", choices=["train", "evaluate", "prepare", "distill"],
                     help="distill (text, speech): retrain the draft against the finished target")
    zoo.add_argument("zoo_modality", metavar="modality", help="text, image or speech")
    demo = sub.add_parser("demo", help="start the Gradio app")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", action="store_true")
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    return parser


def _parse(argv: list[str] | None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in ("generate", "compare"):
        api = modality_api(args.modality)
        sub = argparse.ArgumentParser(prog=f"mmspec {args.command} --modality {args.modality}", add_help=False)
        api.add_arguments(sub)
        extra, unknown = sub.parse_known_args(rest)
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        vars(args).update(vars(extra))
        return args, api, rest
    return args, None, rest


def _sampling(args) -> Sampling:
    return Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def _check(args) -> None:
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")


def run_method(api, target, drafter_name: str, rule_name: str, args, draft=None):
    """One generation with a named drafter and rule; returns the Generation."""
    from .loop import generate

    opts = api.options(args)
    rule = make_rule(rule_name, api, target, opts)
    drafter = make_drafter(drafter_name, draft=draft, init=args.init, ngram=args.ngram, inits=api.INITS,
                           extra=getattr(api, "DRAFTERS", None), target=target, options=opts)
    prompt = api.prompts(args.prompt if args.prompt is not None else api.DEFAULT_PROMPT, args.batch, **opts)
    return generate(
        target, drafter, prompt, max_new_tokens=args.max_new_tokens or api.DEFAULT_MAX_NEW, k=args.k,
        rule=rule, sampling=_sampling(args), seed=args.seed,
    )


def _check_drafter(name: str, args, api) -> None:
    """Validate drafter and init names before any model loads."""
    make_drafter(name, draft=object(), init=args.init, ngram=args.ngram, inits=api.INITS,
                 extra=getattr(api, "DRAFTERS", None))


def _default_rule(args) -> str:
    return "greedy" if args.temperature == 0 else "speculative"


def cmd_generate(args, api) -> int:
    _check(args)
    sampling = _sampling(args)  # validates before any model loads
    rule = args.rule or _default_rule(args)
    check_rule(rule, api)
    _check_drafter(args.drafter, args, api)
    opts = api.options(args)
    target = api.load(args.target or api.DEFAULT_TARGET, **opts)
    draft = api.load(args.draft or api.DEFAULT_DRAFT, **opts) if args.drafter == "model" else None
    gen = run_method(api, target, args.drafter, rule, args, draft=draft)
    files = api.save(gen, args.out)
    stats = {k: v for k, v in gen.stats.items() if k != "accepted_per_step"}
    if args.json:
        outputs = [o if isinstance(o, str) else None for o in gen.outputs]
        result = {"outputs": outputs if any(o is not None for o in outputs) else files, "token_ids": gen.token_ids(),
                  "stats": stats, "files": files, "method": method_label(args.drafter, rule),
                  "lossless": is_lossless(rule, api),
                  "sampling": vars(sampling)}
        extra = getattr(api, "json_extra", None)
        if extra is not None:
            result.update(extra(gen))
        print(json.dumps(result))
    else:
        describe = getattr(api, "describe", lambda o: f"<{type(o).__name__}; use --out FILE to save it>")
        for i, out in enumerate(gen.outputs):
            print(out if isinstance(out, str) else (files[i] if i < len(files) else describe(out)))
        print(f"\n[{method_label(args.drafter, rule)}] {stats['new_tokens']} tokens in {stats['wall_s']:.2f}s "
              f"({stats['tokens_per_s']:.1f}/s), mean accepted {stats['mean_accepted']:.2f}, "
              f"acceptance {stats['acceptance_rate']:.2f}", file=sys.stderr)
    return 0


def cmd_compare(args, api) -> int:
    _check(args)
    _sampling(args)
    methods = []
    for item in [m.strip() for m in args.methods.split(",") if m.strip()]:
        drafter, _, rule = item.partition(":")
        rule = rule or _default_rule(args)
        _check_drafter(drafter, args, api)
        check_rule(rule, api)
        methods.append((drafter, rule))
    opts = api.options(args)
    target = api.load(args.target or api.DEFAULT_TARGET, **opts)
    draft = api.load(args.draft or api.DEFAULT_DRAFT, **opts) if any(d == "model" for d, _ in methods) else None
    base_rule = "greedy" if args.temperature == 0 else ("reproducible" if any(r == "reproducible" for _, r in methods) else "speculative")
    run_method(api, target, "none", base_rule, args)  # warm-up
    base = run_method(api, target, "none", base_rule, args)
    rows = [("autoregressive", base_rule, base)]
    for drafter, rule in methods:
        run_method(api, target, drafter, rule, args, draft=draft)  # warm-up
        rows.append((drafter, rule, run_method(api, target, drafter, rule, args, draft=draft)))
    table = []
    for drafter, rule, gen in rows:
        s = gen.stats
        table.append({
            "method": method_label(drafter, rule) if drafter != "autoregressive" else "autoregressive",
            "lossless": is_lossless(rule, api), "identical_to_baseline": gen.token_ids() == base.token_ids(),
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
    if args.zoo_modality not in MODALITIES:
        raise ValueError(f"unknown modality {args.zoo_modality!r}; allowed: {', '.join(MODALITIES)}")
    if args.action == "distill" and args.zoo_modality == "image":
        raise ValueError("zoo distill is a text and speech recipe step; the image recipe trains its draft inside `train`")
    recipe = importlib.import_module(f"mmspec.{args.zoo_modality}.recipe")
    return recipe.main([args.action, *rest]) or 0


def cmd_bench(args, rest) -> int:
    from . import bench

    return bench.main(args, rest) or 0


def cmd_demo(args, rest) -> int:
    from mmspec.demos import app

    return app.main(args) or 0


def main(argv: list[str] | None = None) -> int:
    try:
        args, api, rest = _parse(argv)
        if args.command == "generate":
            return cmd_generate(args, api)
        if args.command == "compare":
            return cmd_compare(args, api)
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
