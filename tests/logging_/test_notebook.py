"""Training from a Jupyter notebook, in a real kernel (nbclient + ipykernel, in the test extra): tqdm's notebook
bar (a widget) shows the progress, and the notebook's own matplotlib backend (inline) stays as it was.
Outside a notebook: the terminal bar on a TTY, plain lines otherwise."""

from __future__ import annotations

import io
import os
import pty
from pathlib import Path

import pytest

from visiontrain.watch.console import ConsoleLogger, in_notebook, progress_style

_CELLS = [
    "%matplotlib inline\nimport matplotlib\nbefore = matplotlib.get_backend()",
    "import visiontrain\n"
    "run = visiontrain.train({'data': {'name': 'synthetic', 'batch_size': 16,\n"
    "                                  'args': {'train': 48, 'val': 16, 'test': 16, 'size': 16}},\n"
    "                         'train': {'epochs': 1}, 'out': 'runs', 'name': 'notebook'})",
    "print('backend kept:', matplotlib.get_backend() == before, before)",
]
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.mark.slow  # a kernel of its own: ~10 s
def test_a_notebook_shows_the_widget_bar_and_keeps_its_backend(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("ipywidgets")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in _CELLS])
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    training = notebook.cells[1].outputs
    widgets = [o for o in training if o.get("output_type") == "display_data" and WIDGET in o.get("data", {})]
    assert widgets, training  # tqdm.notebook's bar: an ipywidgets HBox, not text on stderr
    text = "".join(o.get("text", "") for o in training if o.get("output_type") == "stream")
    assert "epoch 1/1: train loss" in text  # the epoch summary line is printed as well
    assert "step 3/3 loss" not in text  # no per-step lines in place of the bar
    assert "backend kept: True" in notebook.cells[2].outputs[0]["text"]
    assert (tmp_path / "runs" / "notebook" / "summary.json").is_file()


def test_a_script_is_not_a_notebook_and_gets_lines_or_a_terminal_bar() -> None:
    assert not in_notebook()
    assert progress_style(io.StringIO()) == "lines"  # a pipe or a log file
    main, side = pty.openpty()
    try:
        with os.fdopen(side, "w", closefd=False) as terminal:
            assert progress_style(terminal) == "bar"
            assert ConsoleLogger(terminal).progress
    finally:
        os.close(main)
        os.close(side)
    assert not ConsoleLogger(io.StringIO()).progress
