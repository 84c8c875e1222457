"""Versions and renames: ``mmspec.__version__`` is pyproject's, CHANGELOG.md has its section, and every renamed
public name fails for one release with an error naming its replacement (``mmspec/renamed.py``)."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import torch

import mmspec
from mmspec.cli import main
from mmspec.testing import ToyTarget

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_pyprojects_and_has_a_changelog_section():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert mmspec.__version__ == version
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M)
    assert "## [Unreleased]" in changelog


def test_every_renamed_name_is_in_the_changelog():
    from mmspec.renamed import RENAMED

    changelog = (ROOT / "CHANGELOG.md").read_text()
    for old, (new, release) in RENAMED.items():
        assert f"{old}`" in changelog and f"{new}`" in changelog and f"## [{release}]" in changelog, old


def test_stats_key_target_forwards_names_steps():
    gen = mmspec.generate(ToyTarget(vocab_size=5), None, torch.tensor([[[0], [1], [2]]]), max_new_tokens=3)
    with pytest.raises(KeyError, match="target_forwards was renamed steps in 0.2.0"):
        gen.stats["target_forwards"]
    with pytest.raises(KeyError, match="renamed steps"):
        gen.stats.get("target_forwards", 0)
    with pytest.raises(KeyError, match="^'nonsense'$"):  # other missing keys: a plain KeyError
        gen.stats["nonsense"]
    assert gen.stats["steps"] == 3 and gen.stats.get("nonsense", 7) == 7
    assert json.loads(json.dumps(gen.stats))["steps"] == 3  # still a dict for JSON


def test_decode_names_stream():
    with pytest.raises(AttributeError, match="mmspec.decode was renamed stream in 0.2.0"):
        mmspec.decode
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        mmspec.nonsense


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="sjd"), r"generate\(prompt, 'jacobi', 'speculative', temperature=1\)"),
    (dict(method="draft"), r"'model', 'speculative'"),
    (dict(method="jacobi"), r"'jacobi', 'greedy', temperature=0"),
    (dict(cfg_scale=3.0), "cfg_scale was renamed guidance_scale in 0.2.0"),
    (dict(options={"cfg_scale": 3.0}), "options: cfg_scale was renamed guidance_scale"),
    (dict(options={"cfg_interval": (0, 0.5)}), "cfg_interval was renamed guidance_interval"),
])
def test_image_one_liner_names_the_new_arguments(monkeypatch, kwargs, match):
    import mmspec.image
    from mmspec.modalities import Models

    def never(self, *args, **kwargs):
        raise AssertionError("a model loaded before the arguments were checked")

    monkeypatch.setattr(Models, "get", never)
    with pytest.raises(ValueError, match=match):
        mmspec.image.generate("red ring", **kwargs)


def test_image_load_names_guidance_scale():
    from mmspec.image import api

    with pytest.raises(ValueError, match="cfg_scale was renamed guidance_scale"):
        api.load("zoo:shapes", cfg_scale=2.0)


@pytest.mark.parametrize("argv, new", [(["--cfg", "3"], "--guidance-scale"), (["--cfg"], "--guidance-scale"),
                                       (["--cfg-interval", "0,0.5"], "--guidance-interval")])
def test_cfg_flags_name_their_new_options(capsys, argv, new):
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--modality", "image", *argv])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"was renamed {new} in 0.2.0" in err.strip().splitlines()[-1]
    with pytest.raises(SystemExit):
        main(["generate", "--modality", "image", "--help"])
    assert "--cfg" not in capsys.readouterr().out  # hidden from --help
