"""The ``mmspec`` command: generate, compare, bench, zoo, demo.

User mistakes (bad values, unknown names, missing models) exit with code 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import statistics
import sys

from tqdm.auto import tqdm

from . import accept
from . import methods as named
from . import modalities, timing
from .types import Sampling, count

EXAMPLES = """examples:
  mmspec generate --drafter prompt-lookup --prompt "def fibonacci(n):"
  mmspec compare --methods prompt-lookup,model --max-new-tokens 48
  mmspec bench --suite text --quick --out bench-out
  mmspec methods --modality speech"""


def _modality_in(argv: list[str]) -> str:
    """The ``--modality`` named on the command line (text when absent), read before the full parse so that
    ``--help`` can show that modality's drafters, rules and options."""
    for i, arg in enumerate(argv):
        if arg == "--modality" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--modality="):
            return arg.split("=", 1)[1]
    return "text"


def _common(p: argparse.ArgumentParser, modality) -> None:
    modality.add_arguments(p)
    p.add_argument("--modality", default="text", help=f"one of: {', '.join(modalities.names())}")
    p.add_argument("--target", default=modality.default_target, help="hub name, local path or zoo:NAME")
    p.add_argument("--draft", default=modality.default_draft, help="draft model for --drafter model")
    p.add_argument("--prompt", default=modality.default_prompt, help="the prompt")
    p.add_argument("--k", type=int, default=4, help=f"drafted {modality.unit} per step (the Jacobi window)")
    p.add_argument("--init", default="random", help="Jacobi/lookahead init: pad, random, repeat, or a modality's own")
    p.add_argument("--ngram", type=int, default=None,
                   help="n-gram length N: prompt lookup matches the last N..1 frames (3 when not given), lookahead "
                        "keeps N-grams (4 when not given)")
    p.add_argument("--tree", type=int, default=0, metavar="NODES",
                   help="node budget of a token tree per step (0: a chain); compare gives it to the drafters that "
                        "branch")
    p.add_argument("--tree-width", type=int, default=2, metavar="W", help="children per expanded tree node")
    p.add_argument("--dynamic-tree", action="store_true",
                   help="model drafter: grow the tree where the draft is most confident (EAGLE-2) instead of a fixed shape")
    p.add_argument("--heads", default=None, metavar="DIR",
                   help=f"drafter heads: a folder from `mmspec heads train` (default: {modality.default_heads or 'none'})")
    p.add_argument("--max-new-tokens", type=int, default=modality.max_new_tokens,
                   help=f"new {modality.unit} per row (None: as many as the target holds)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely only")
    p.add_argument("--top-p", type=float, default=None, help="sample from the smallest set holding mass p")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--batch", type=int, default=1, help="rows generated together (the same prompt)")
    p.add_argument("--out", default=None, help=f"output file ending in {', '.join(modality.suffixes or (modality.extension,))}"
                   f"; a batch is numbered")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_fast(p)


def _add_fast(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                        help="the fast path (static cache + prepacked products, mmspec.fast) for every model of the "
                             "run; default: on where it measured faster (Llama-family models on a CPU, float32/bfloat16)")


def build_parser(modality: str = "text") -> argparse.ArgumentParser:
    """The parser; ``generate`` and ``compare`` carry ``modality``'s own names and options."""
    mod = modalities.get(modality)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="mmspec", description="Speculative decoding for autoregressive models: "
                                     f"{', '.join(modalities.names())}",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate with one method", formatter_class=fmt)
    _common(gen, mod)
    gen.add_argument("--drafter", default="none", help=f"{mod.name}: {', '.join(named.drafter_names(mod))}")
    gen.add_argument("--rule", default=None, help=f"{mod.name}: {', '.join(named.rule_specs(mod))} (default: greedy at "
                     "temperature 0, else speculative; `mmspec methods` says which are lossless)")
    cmp_ = sub.add_parser("compare", help="baseline and several methods on the same prompt", formatter_class=fmt)
    _common(cmp_, mod)
    cmp_.add_argument("--methods", default=None,
                      help=f"comma-separated drafter[:rule] list, e.g. model:speculative,jacobi (default: "
                      f"{','.join(mod.compare)}; the heads methods only on the default target or with --heads)")
    cmp_.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up; the methods take turns "
                      "in every round")
    meth = sub.add_parser("methods", help="list each modality's drafters, Jacobi inits and accept rules",
                          formatter_class=fmt)
    meth.add_argument("--modality", default=None, help="one modality (default: all)")
    _add_bench(sub.add_parser("bench", help="benchmark suites (see BENCHMARKS.md)", formatter_class=fmt))
    zoo = sub.add_parser("zoo", add_help=False,  # --help goes to the recipe: `mmspec zoo train text --help`
                         help="train the offline zoo models (`mmspec zoo ACTION MODALITY --help` for options)")
    zoo.add_argument("action", choices=["train", "evaluate", "prepare", "distill"],
                     help="distill: retrain the draft against the finished target (where the recipe has it)")
    zoo.add_argument("zoo_modality", metavar="modality", help=f"one of: {', '.join(modalities.names())}")
    heads = sub.add_parser("heads", add_help=False, help="train self-drafting heads (medusa, eagle) for a target, "
                           "export them for vLLM / SGLang (`mmspec heads train|export --help`)")
    heads.add_argument("action", choices=["train", "export"])
    demo = sub.add_parser("demo", help="start the Gradio app", formatter_class=fmt)
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", action="store_true")
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    demo.add_argument("--model", action="append", default=[], metavar="MODALITY=NAME_OR_PATH",
                      help="also serve this model in the app (repeatable); by default only each modality's zoo pair")
    demo.add_argument("--allow-any-model", action="store_true",
                      help="let any folder path or hub id typed into the app load (local use only; off by default)")
    _add_fast(demo)
    return parser


def _add_bench(bench: argparse.ArgumentParser) -> None:
    """``mmspec bench``'s options (read by ``mmspec.bench.main``)."""
    bench.add_argument("--suite", default="text", help=f"one of: {', '.join(modalities.names())}, or all")
    bench.add_argument("--out", default="bench-out")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--target", default=None, help="target model (default: the suite modality's zoo model)")
    bench.add_argument("--draft", default=None, help="draft model for the model drafter (default: the zoo draft)")
    bench.add_argument("--heads", default=None, metavar="DIR",
                       help="self-drafter folder for the heads methods (default: the zoo heads of the zoo target)")
    bench.add_argument("--repeats", type=int, default=None, help="timed runs per prompt (default 3, --quick 1)")
    bench.add_argument("--prompts", type=int, default=None, help="number of prompts (default: the suite's)")
    bench.add_argument("--prompt", action="append", default=None,
                       help="use this prompt instead of the suite's prompt set (repeat for several)")
    bench.add_argument("--max-new-tokens", type=int, default=None, help="frames per prompt (default: the suite's)")
    bench.add_argument("--batch", type=int, default=1, help="different prompts generated together (each row commits "
                       "its own accepted frames); the baseline runs the same batches")
    bench.add_argument("--compact", action=argparse.BooleanOptionalAction, default=True,
                       help="with --batch: rows that have ended leave the batch once half of it has (mmspec.compaction); "
                            "--no-compact keeps them riding along, to measure what that saves")
    bench.add_argument("--k", type=int, default=None, help="drafted frames per step (default: the suite's)")
    bench.add_argument("--methods", default=None,
                       help="comma-separated method labels (a label picks that method) or drafter names (every method "
                            "of that drafter)")
    bench.add_argument("--tree", type=int, default=0, metavar="NODES",
                       help="give every method whose drafter branches this node budget per step (0: as the suite says)")
    bench.add_argument("--tree-width", type=int, default=None, metavar="W", help="children per expanded tree node")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--device", default=None, help="cpu or cuda (default: the adapter's)")
    bench.add_argument("--dtype", default=None, help="model dtype (default: the adapter's)")
    _add_fast(bench)
    bench.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _parse(argv: list[str] | None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_modality_in(argv))
    args, rest = parser.parse_known_args(argv)
    if args.command in ("generate", "compare"):
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args, modalities.get(args.modality), rest
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
    modality.prompts(args.prompt, 1)
    if args.tree < 0:
        raise ValueError(f"--tree (node budget) must be 0 (a chain) or >= 1, got {args.tree}")
    for drafter in drafters:
        named.check_drafter(drafter, modality, init=args.init, ngram=args.ngram, tree=_tree(args, modality, drafter),
                            width=args.tree_width, dynamic=args.dynamic_tree and named.needs_draft(drafter))
    for rule in rules:
        accept.spec_of(rule, modality.rules)
    if any("heads" in named.parts_of(d) for d in drafters):
        from .heads.store import read_heads_config

        read_heads_config(named.heads_folder(modality, args.heads))
    if args.out:
        from .files import writable

        writable(args.out, modality.suffixes or (modality.extension,))


def run_method(modality, target, drafter: str, rule: str, args, draft=None, cache: dict | None = None):
    """One generation with a named drafter and rule; returns the Generation (loaded heads kept in ``cache``)."""
    return named.run(modality, target, args.prompt, drafter=drafter, rule=rule, draft=draft, batch=args.batch,
                     k=args.k, init=args.init, ngram=args.ngram, max_new_tokens=args.max_new_tokens,
                     sampling=_sampling(args), seed=args.seed, options=modality.options(args),
                     tree=_tree(args, modality, drafter), width=args.tree_width,
                     dynamic=args.dynamic_tree and named.needs_draft(drafter), heads=args.heads, cache=cache)


def _tree(args, modality, drafter: str) -> int | None:
    """The node budget for ``drafter``: ``generate`` asks it of the one drafter named (an error if it cannot
    branch); ``compare`` gives it to the methods that branch and runs the others as chains."""
    if args.command == "generate" and drafter != "none":
        return args.tree or None
    return named.budget_for(drafter, modality, args.tree)


def _load(modality, args, need_draft: bool):
    opts = dict(modality.options(args), **({} if args.fast is None else {"fast": args.fast}))
    target = modality.load(args.target, **opts)
    draft = modality.load(args.draft, **opts) if need_draft else None
    return target, draft


def cmd_generate(args, modality) -> int:
    rule = args.rule or named.default_rule(args.temperature)
    _check(args, modality, [args.drafter], [rule])
    target, draft = _load(modality, args, named.needs_draft(args.drafter))
    gen = run_method(modality, target, args.drafter, rule, args, draft=draft)
    files = gen.save(args.out) if args.out else []
    stats = {k: v for k, v in gen.stats.items() if k != "accepted_per_step"}
    spec = accept.spec_of(rule, modality.rules)
    if args.json:
        outputs = [o if isinstance(o, str) else repr(o) for o in gen.outputs]
        result = {"outputs": outputs, "token_ids": gen.token_ids(), "stats": stats, "files": files,
                  "method": named.label(args.drafter, rule), "lossless": spec.lossless, "bound": spec.bound,
                  "sampling": vars(_sampling(args))}
        if all(hasattr(o, "seconds") for o in gen.outputs):  # outputs with a duration (audio)
            result["output_seconds"] = [round(o.seconds, 4) for o in gen.outputs]
        print(json.dumps(result))
        return 0
    for i, out in enumerate(gen.outputs):
        shown = files[i] if files else f"{out!r} (use --out FILE{modality.extension} to save it)"
        print(out if isinstance(out, str) else shown)
    print(f"\n[{named.label(args.drafter, rule)}] {stats['new_tokens']} {modality.unit} in {stats['wall_s']:.2f}s "
          f"({stats['tokens_per_s']:.1f}/s), mean accepted {stats['mean_accepted']:.2f}, "
          f"acceptance {stats['acceptance_rate']:.2f}", file=sys.stderr)
    return 0


def _methods(args, modality) -> list[tuple[str, str]]:
    """``--methods`` as (drafter, rule) pairs; by default the modality's ``compare`` list, less the methods that
    need heads when there are none for this target (another target and no --heads)."""
    if args.methods is not None:
        items = [m.strip() for m in args.methods.split(",") if m.strip()]
    else:
        heads = args.heads is not None or (args.target == modality.default_target and modality.default_heads is not None)
        items = [m for m in modality.compare if heads or "heads" not in named.parts_of(m.partition(":")[0])]
    out = []
    for item in items:
        drafter, _, rule = item.partition(":")
        out.append((drafter, rule or named.default_rule(args.temperature)))
    return out


def cmd_compare(args, modality) -> int:
    """The baseline and each method, timed in interleaved rounds; median speedup with its spread."""
    methods = _methods(args, modality)
    _check(args, modality, [d for d, _ in methods], [r for _, r in methods])
    repeats = count(args.repeats, "--repeats")
    target, draft = _load(modality, args, any(named.needs_draft(d) for d, _ in methods))
    keyed = any(r == "reproducible" for _, r in methods)
    base_rule = "greedy" if args.temperature == 0 else ("reproducible" if keyed else "speculative")
    plan = {"autoregressive": ("none", base_rule), **{named.label(d, r): (d, r) for d, r in methods}}
    cache: dict = {}  # the heads are read once for every round
    runs = {name: functools.partial(run_method, modality, target, d, r, args, draft=draft, cache=cache)
            for name, (d, r) in plan.items()}
    with tqdm(total=len(runs) * (repeats + 1), desc="compare", file=sys.stderr, leave=False) as bar:
        def progress(name, round_):
            bar.set_postfix_str(f"{name}, {'warm-up' if round_ == 0 else f'round {round_}/{repeats}'}")
            bar.update()

        results = timing.interleave(runs, repeats, progress=progress)
    env = dict(timing.machine(target.device), forward=getattr(target, "forward_path", "eager"),  # both sides ran it
               setup_s=getattr(getattr(target, "fast", None), "setup_s", None))  # the fast path's packing, once
    table = [_compare_row(name, plan[name][1], gens, results["autoregressive"], modality, repeats, env)
             for name, gens in results.items()]
    if args.json:
        print(json.dumps({"rows": table, "machine": env, "repeats": repeats}))
        return 0
    print(_compare_report(args, modality, env, repeats, results["autoregressive"][-1], table))
    return 0


def _compare_row(name, rule, gens, base, modality, repeats, env) -> dict:
    """One method's row: medians with min-max over the rounds; the speedup is computed per round."""
    seconds = [g.wall_s for g in gens]
    speedup = timing.ratio_spread([g.wall_s for g in base], seconds)
    tps = timing.Spread.of([g.stats["tokens_per_s"] for g in gens])
    s = gens[-1].stats
    return {
        "method": name, "lossless": accept.spec_of(rule, modality.rules).lossless,
        "identical_to_baseline": all(g.token_ids() == base[-1].token_ids() for g in gens),
        "wall_s": statistics.median(seconds), "tokens_per_s": tps.median, "tokens_per_s_min": tps.low,
        "tokens_per_s_max": tps.high, "speedup": speedup.median, "speedup_min": speedup.low,
        "speedup_max": speedup.high, "repeats": repeats, "tokens_per_forward": s["mean_accepted"],
        "mean_accepted": s["mean_accepted"], "acceptance_rate": s["acceptance_rate"], "steps": s["steps"],
        "new_tokens": s["new_tokens"], "nodes_per_forward": s["nodes_per_forward"], "flags": [] if name == "autoregressive" else timing.flags(speedup, seconds, env),
    }


def _compare_report(args, modality, env, repeats, base, table) -> str:
    """The printed comparison: context, the baseline's output, a legend, the table and any warnings."""
    prompt = args.prompt
    out = base.outputs[0]
    load = "n/a" if env["load_1min"] is None else f"{env['load_1min']:.1f}"
    lines = [f"prompt: {prompt!r}",
             f"{modality.name}: target {args.target}, k={args.k}, "
             f"max_new_tokens={args.max_new_tokens or 'full length'}, temperature={args.temperature}, "
             f"seed={args.seed}, {repeats} interleaved rounds after a warm-up",
             f"device {env['device']}, {env['threads']} torch threads, {env['cpu_count']} cores, load {load}, "
             f"forward {env['forward']} (every row)" + (f", set up in {env['setup_s']:.1f} s at load" if env["setup_s"] else ""),
             "baseline output:", out if isinstance(out, str) else repr(out), "",
             f"speedup = autoregressive time / method time per round: median [min-max]; tok/fwd = {modality.unit} "
             "per target forward (machine-independent); same = identical output to the baseline", "",
             f"{'method':28} {'speedup':>18} {'tok/s':>8} {'tok/fwd':>8} {'acc.rate':>9} {'same':>5}"]
    for r in table:
        spread = f"{r['speedup']:.2f} [{r['speedup_min']:.2f}-{r['speedup_max']:.2f}]"
        lines.append(f"{r['method'][:28]:28} {spread:>18} {r['tokens_per_s']:8.1f} {r['tokens_per_forward']:8.2f} "
                     f"{r['acceptance_rate']:9.2f} {str(r['identical_to_baseline']):>5}")
    lines += [f"note: {r['method']}: {flag}" for r in table for flag in r["flags"]]
    return "\n".join(lines)


def cmd_methods(args) -> int:
    """Print, per modality, the drafters, init policies and rules (lossless, or the stated bound)."""
    for name in [args.modality] if args.modality else modalities.names():
        reason = modalities.unavailable(name)
        if reason:
            print(f"[{name}] unavailable here: {reason}")
            continue
        modality = modalities.get(name)
        print(f"[{name}] unit: {modality.unit}; default length: {modality.max_new_tokens or 'the target’s full length'}")
        print(f"  drafters: {', '.join(named.drafter_names(modality))}; A+B (one trie), A|B (the first that drafts)")
        print(f"  inits:    {', '.join(named.init_names(modality))}")
        for rule, spec in named.rule_specs(modality).items():
            print(f"  rule {rule:13} {'lossless' if spec.lossless else 'LOSSY: ' + spec.bound}")
    return 0


def cmd_heads(args, rest) -> int:
    """``mmspec heads train|export ...``: ``mmspec.heads.cli.main`` / ``export_main`` (own options and --help)."""
    from .heads import cli as heads_cli

    return _delegate(heads_cli.export_main if args.action == "export" else heads_cli.main, rest)


def cmd_zoo(args, rest) -> int:
    """The modality package's own training recipe (``mmspec.<modality>.recipe.main``)."""
    modalities.get(args.zoo_modality)  # unknown names -> ValueError listing the registered ones
    try:
        recipe = importlib.import_module(f"mmspec.{args.zoo_modality}.recipe")
    except ModuleNotFoundError:
        raise ValueError(f"modality {args.zoo_modality!r} ships no zoo recipe") from None
    return _delegate(recipe.main, [args.action, *rest])


def _delegate(main, argv: list[str]) -> int:
    """Run another command's ``main(argv)``; its own argument errors and --help end with their exit code."""
    try:
        return main(argv) or 0
    except SystemExit as stop:
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
        if args.command == "heads":
            return cmd_heads(args, rest)
        if args.command == "zoo":
            return cmd_zoo(args, rest)
        if rest:
            build_parser().error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "bench":
            return cmd_bench(args, rest)
        if args.command == "methods":
            return cmd_methods(args)
        return cmd_demo(args, rest)
    except ValueError as err:
        print(f"mmspec: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
