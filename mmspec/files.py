"""Where models and outputs live: ``zoo:NAME`` names, local folders, hub ids, numbered output files.

Each adapter keeps its zoo in ``<adapter>/zoo/NAME`` and marks a model folder by one file it must hold
(``config.json``, ``mmspec_image.json``, ...); this module only knows those paths, not the modalities.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path


def resolve(name_or_path, zoo: Path, marker: str, modality: str, hub: bool = True) -> str:
    """``zoo:NAME`` -> ``zoo/NAME`` (which must hold ``marker``); an existing local path as is; anything
    that looks like a path but is missing -> ValueError; otherwise a hub id (when ``hub``)."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError(f"{modality} model must be a hub name, a local path or zoo:NAME, got {name_or_path!r}")
    name = str(name_or_path)
    if name.startswith("zoo:"):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name[4:]) or ".." in name[4:]:
            raise ValueError(f"zoo names are plain folder names such as zoo:code-target, got {name!r}")
        folder = Path(zoo) / name[4:]
        if not (folder / marker).exists():
            known = sorted(p.name for p in Path(zoo).iterdir() if (p / marker).exists()) if Path(zoo).exists() else []
            raise ValueError(f"unknown {modality} zoo model {name!r}; available: "
                             f"{', '.join('zoo:' + k for k in known) or 'none'} (train with `mmspec zoo train {modality}`)")
        return str(folder)
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return expanded
    if not hub or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:  # hub ids: "org/name"
        raise ValueError(f"model path {name!r} does not exist")
    return name


def numbered(path: str, count: int) -> list[str]:
    """``out.png`` for one output, ``out_0.png, out_1.png, ...`` for several."""
    if count == 1:
        return [path]
    stem, dot, ext = path.rpartition(".")
    return [f"{stem}_{i}.{ext}" if dot else f"{path}_{i}" for i in range(count)]


def writable(path, suffixes: tuple[str, ...] = ()) -> str:
    """Check, before any work, that a file can be written at ``path`` (creating its missing folders) and, when
    ``suffixes`` are given (``(".png", ".jpg")``), that its name ends in one of them.

    Returns the path as a string; a folder, an unwritable place, another suffix or an empty name is a
    ValueError. Writability is tried, not guessed from permission bits (root passes those everywhere): a
    temporary file is created in the folder and removed."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ValueError(f"output path must be a file name such as out.png, got {path!r}")
    path = os.path.expanduser(str(path))
    if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
        raise ValueError(f"output file {path!r} must end in {', '.join(suffixes)} (what this output saves as)")
    if os.path.isdir(path):
        raise ValueError(f"output path {path!r} is a folder; give a file name inside it")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the folder for {path!r}: {err.strerror}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mmspec-check-"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write to {folder!r}: {err.strerror or err}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"cannot overwrite {path!r} (permission denied)")
    return path
