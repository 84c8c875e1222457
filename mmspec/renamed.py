"""Public names renamed in a release (CHANGELOG.md): for one release an old name fails with an error that
names its replacement, instead of being ignored or failing somewhere deep. Drop an entry a release later.
"""
from __future__ import annotations

import argparse

RENAMED = {  # old name -> (new name, the release that renamed it)
    "cfg_scale": ("guidance_scale", "0.2.0"),
    "cfg_interval": ("guidance_interval", "0.2.0"),
    "--cfg": ("--guidance-scale", "0.2.0"),
    "--cfg-interval": ("--guidance-interval", "0.2.0"),
    "target_forwards": ("steps", "0.2.0"),
    "decode": ("stream", "0.2.0"),
}

ATTRIBUTES = ("decode",)  # the renamed names that were attributes of the ``mmspec`` package

IMAGE_METHODS = {  # mmspec.image.generate(method=...) before 0.2.0 -> (drafter, rule, temperature)
    "autoregressive": ("none", "speculative", 1.0), "jacobi": ("jacobi", "greedy", 0.0),
    "sjd": ("jacobi", "speculative", 1.0), "lantern": ("jacobi", "lantern", 1.0), "draft": ("model", "speculative", 1.0),
}


def message(old: str) -> str:
    new, release = RENAMED[old]
    return f"{old} was renamed {new} in {release}"


def check_keywords(names, where: str) -> None:
    """ValueError for the first renamed keyword among ``names`` given to ``where`` (e.g. ``options``)."""
    for name in names:
        if name in RENAMED:
            raise ValueError(f"{where}: {message(name)}")


def check_method(kwargs: dict) -> None:
    """ValueError for ``method=`` (the image one-liner's argument before 0.2.0), naming its drafter and rule."""
    if "method" not in kwargs:
        return
    method = kwargs["method"]
    drafter, rule, temperature = IMAGE_METHODS.get(method, ("DRAFTER", "RULE", 0.0))
    raise ValueError(f"generate(method={method!r}) was replaced in 0.2.0 by drafter and rule names: "
                     f"generate(prompt, {drafter!r}, {rule!r}, temperature={temperature:g}) "
                     "(`mmspec methods` lists them)")


class RenamedOption(argparse.Action):
    """A command-line option that was renamed: using it is an argparse error naming the new option."""

    def __init__(self, option_strings, dest, **kwargs):
        kwargs.pop("type", None)
        kwargs.setdefault("nargs", "?")  # with or without its value, the error names the new option
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        raise argparse.ArgumentError(self, message(option_string))


class Stats(dict):
    """A generation's statistics: a dict whose renamed keys raise a KeyError naming the new key."""

    def __missing__(self, key):
        if key in RENAMED:
            raise KeyError(f"stats key {message(key)}")
        raise KeyError(key)

    def get(self, key, default=None):
        if key in RENAMED and key not in self:
            raise KeyError(f"stats key {message(key)}")
        return super().get(key, default)
