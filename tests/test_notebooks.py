"""The tutorial notebooks execute top to bottom (nbclient) on the zoo models, so they cannot rot.

The kernel is this interpreter (a kernel spec written to a temporary folder), whatever Jupyter kernels
the machine has installed elsewhere.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "demos" / "notebooks"
NAMES = ["01_text.ipynb", "02_image.ipynb", "03_speech.ipynb", "04_new_drafter.ipynb", "05_heads.ipynb"]
KERNEL = "mmspec-test-python"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, monkeypatch_module):
    """A kernel spec that starts ``sys.executable -m ipykernel_launcher`` (this venv's Python)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mmspec test", "language": "python"}))
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    monkeypatch_module.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return KERNEL


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_notebooks_are_committed_without_outputs():
    import nbformat

    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(not c.outputs and c.execution_count is None for c in code), name
        assert nb.cells[0].cell_type == "markdown"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, kernel, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the speedup plot is shown"
    if name == "02_image.ipynb":
        assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # images inline + plot
    if name == "03_speech.ipynb":
        assert sum("<audio" in str(o.get("data", {}).get("text/html", "")) for o in outputs) == 3
