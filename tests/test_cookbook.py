"""Every recipe of docs/cookbook.md, every example of docs/api.md and the README's Python example, executed.

The docs' fenced blocks are the test data (conventions at the top of docs/cookbook.md):

- ```` ```bash ```` runs in ``bash -e -o pipefail`` in the doc's working folder (one per doc, prepared by
  ``docs/cookbook_assets/make_assets.py``) with ``visiontrain`` on PATH; ```` ```python ```` runs as a script there
  (a fresh process each, like ``python block.py``). Blocks run in document order and share the folder.
- a block whose first line is a file name comment (``# mydata.py``) is written to that file instead of being run.
- ```` ```bash exit=2 ```` must end with that exit code; a block starting with ``# not run by the tests: WHY`` (a GPU, a
  download, a server) is not run: each ``visiontrain …`` command in it must parse with the real argument parser.
- A ```` ```text ```` block right after a run block is its expected output: every line of it must be a line of
  what the block printed, where any number matches any number and ``…`` matches anything.

Speed: one process per ``visiontrain`` call would pay PyTorch's import (3-6 s on this machine) ~25 times, so
calls go to a fork server that imported everything once and forks a fresh child per call (argv, working folder,
environment and file descriptors are the caller's; the exit code is returned). Set ``VISIONTRAIN_DOCS_REAL=1``
to run the venv's own ``visiontrain`` and ``python`` instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = {"cookbook": ROOT / "docs" / "cookbook.md", "api": ROOT / "docs" / "api.md", "readme": ROOT / "README.md",
        "multilabel": ROOT / "docs" / "multilabel.md"}
REAL = os.environ.get("VISIONTRAIN_DOCS_REAL") == "1"
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_NUMBER = r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"


# ---------------------------------------------------------------- the blocks of a document


_FILE_LINE = re.compile(r"#\s*([\w./-]+\.(?:py|ya?ml|csv|txt|json))\s*\n")
_NO_RUN_LINE = "# not run by the tests"


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    flags: set[str] = field(default_factory=set)
    attrs: dict[str, str] = field(default_factory=dict)
    code: str = ""
    expected: str | None = None  # the ```text block that follows, if any

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}:{self.lang}"

    @property
    def file(self) -> str | None:
        """A block whose first line is only a file name comment (``# mydata.py``) is that file's content."""
        match = _FILE_LINE.match(self.code)
        return match.group(1) if match and self.lang in ("python", "yaml", "text") else None

    @property
    def runs(self) -> bool:
        return (self.lang in ("bash", "python") and self.file is None and "no-run" not in self.flags
                and not self.code.startswith(_NO_RUN_LINE))


def parse_blocks(doc: str, text: str) -> list[Block]:
    """The fenced blocks in order; a ```text block directly after a run block becomes its ``expected``."""
    blocks: list[Block] = []
    end_of_previous = -1
    for match in _FENCE.finditer(text):
        info = match.group(1).split()
        lang = info[0] if info else ""
        words = info[1:]
        block = Block(doc, text.count("\n", 0, match.start()) + 1, lang, {w for w in words if "=" not in w},
                      dict(w.split("=", 1) for w in words if "=" in w), match.group(2))
        between = text[end_of_previous:match.start()] if end_of_previous >= 0 else "x"
        if lang == "text" and blocks and blocks[-1].runs and not between.strip():
            blocks[-1].expected = block.code
        else:
            blocks.append(block)
        end_of_previous = match.end()
    return blocks


def doc_blocks(doc: str) -> list[Block]:
    path = DOCS[doc]
    return parse_blocks(doc, path.read_text(encoding="utf-8")) if path.is_file() else []


# ---------------------------------------------------------------- expected output


def line_pattern(expected: str) -> re.Pattern[str]:
    """A regex for one expected line: numbers match any number, ``…`` anything, runs of spaces any spaces."""
    parts = []
    for piece in re.split(rf"(…|{_NUMBER}|\s+)", expected.strip()):
        if piece == "…":
            parts.append(".*")
        elif piece and re.fullmatch(_NUMBER, piece):
            parts.append(_NUMBER)
        elif piece and piece.isspace():
            parts.append(r"\s+")
        elif piece:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def missing_lines(expected: str, actual: str) -> list[str]:
    """The expected lines that match no line of the actual output."""
    lines = [line.strip() for line in actual.splitlines()]
    wanted = [line for line in expected.splitlines() if line.strip() and line.strip() != "…"]
    return [w for w in wanted if not any(line_pattern(w).fullmatch(a) for a in lines)]


# ---------------------------------------------------------------- the fork server


def serve(path: str) -> None:
    """Import everything once, then fork one child per request (see the module docstring)."""
    import runpy  # noqa: F401 (the children use it)

    for module in ("visiontrain", "visiontrain.cli", "visiontrain.trainer.training", "visiontrain.cli.use",
                   "visiontrain.use.evaluate", "visiontrain.use.predict", "visiontrain.use.export.write",
                   "visiontrain.cli.models", "visiontrain.models.doctor", "visiontrain.models.zoo",
                   "visiontrain.cli.data", "visiontrain.data.custom", "visiontrain.data.show",
                   "visiontrain.watch.plots", "torchvision", "torch.utils.tensorboard",
                   "tensorboard.backend.event_processing.event_accumulator", "matplotlib.pyplot",
                   "safetensors.torch"):
        __import__(module)
    from visiontrain.cli import build_parser

    build_parser()  # imports the command groups
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    server.settimeout(2.0)
    parent = os.getppid()
    print("ready", flush=True)
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:  # pytest is gone (killed hard): do not linger
                return
            continue
        conn.settimeout(None)
        with conn:
            head, fds, _, _ = socket.recv_fds(conn, 8, 3)
            if len(head) < 8:
                continue
            body = _recv_exactly(conn, struct.unpack("<Q", head)[0])
            request = json.loads(body)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                server.close()
                _child(request, fds)
            for fd in fds:
                os.close(fd)
            _, status = os.waitpid(pid, 0)
            conn.sendall(struct.pack("<i", os.waitstatus_to_exitcode(status)))


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(n - got)
        if not chunk:
            raise EOFError("client went away")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the caller's process, run, exit with the code."""
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds, strict=False):
            os.dup2(fd, target)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]
        sys.argv = list(argv)
        # sys.path as a fresh interpreter would make it: the script's folder (the console script's, or the
        # working folder for a block), then $PYTHONPATH, then the rest (never the server's own first entry)
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        rest = [p for p in sys.path[1:] if p not in extra]
        first = str(Path(sys.executable).parent) if request["kind"] == "cli" else ""
        sys.path[:] = [first, *extra, *rest]
        if request["kind"] == "cli":
            from visiontrain.cli import main

            code = main(argv[1:])
        else:
            import runpy

            runpy.run_path(argv[0], run_name="__main__")
            code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


_SHIM = """#!{python} -SE
import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({sock!r})
body = json.dumps({{"kind": "cli", "argv": ["visiontrain", *sys.argv[1:]], "cwd": os.getcwd(),
                   "env": dict(os.environ)}}).encode()
socket.send_fds(s, [struct.pack("<Q", len(body))], [0, 1, 2])
s.sendall(body)
reply = b""
while len(reply) < 4:
    chunk = s.recv(4 - len(reply))
    if not chunk:
        sys.exit(125)
    reply += chunk
sys.exit(struct.unpack("<i", reply)[0] & 0xFF)
"""


def _ask(sock: str, request: dict, fds: list[int]) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock)
        body = json.dumps(request).encode()
        socket.send_fds(s, [struct.pack("<Q", len(body))], fds)
        s.sendall(body)
        return struct.unpack("<i", _recv_exactly(s, 4))[0]


@dataclass
class Runner:
    """Runs blocks in a folder, through the fork server (or real processes with VISIONTRAIN_DOCS_REAL=1)."""

    sock: str | None
    bin_dir: Path
    env: dict[str, str]

    def bash(self, code: str, cwd: Path, timeout: float) -> tuple[int, str]:
        proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=cwd, env=self.env, timeout=timeout,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return proc.returncode, proc.stdout

    def python(self, code: str, cwd: Path, name: str, timeout: float) -> tuple[int, str]:
        script = cwd / ".blocks" / f"{name}.py"
        script.parent.mkdir(exist_ok=True)
        script.write_text(code, encoding="utf-8")
        if self.sock is None:
            proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env={**self.env, "PYTHONPATH": str(cwd)},
                                  timeout=timeout, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            return proc.returncode, proc.stdout
        with tempfile.TemporaryFile() as out, open(os.devnull) as devnull:
            code_ = _ask(self.sock, {"kind": "python", "argv": [str(script)], "cwd": str(cwd), "env": self.env},
                         [devnull.fileno(), out.fileno(), out.fileno()])
            out.seek(0)
            return code_, out.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("docs-runner")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "120",
           "PATH": f"{bin_dir}{os.pathsep}{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTEST_CURRENT_TEST", None)
    if REAL:
        yield Runner(None, bin_dir, env)
        return
    sock = str(base / "vt.sock")
    launcher = "\n".join([
        "import importlib.util, sys",
        "spec = importlib.util.spec_from_file_location('docs_server', sys.argv[1])",
        "module = sys.modules['docs_server'] = importlib.util.module_from_spec(spec)",
        "spec.loader.exec_module(module)",
        "module.serve(sys.argv[2])"])
    server = subprocess.Popen([sys.executable, "-c", launcher, __file__, sock], env=env, cwd=base,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert server.stdout is not None
        ready = server.stdout.readline()
        assert ready.strip() == "ready", server.stderr.read() if server.stderr else ready
        shim = bin_dir / "visiontrain"
        shim.write_text(_SHIM.format(python=sys.executable, sock=sock), encoding="utf-8")
        shim.chmod(0o755)
        yield Runner(sock, bin_dir, env)
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server and any child of it still running
        server.wait()


# ---------------------------------------------------------------- running one block


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each doc's working folder, made on first use with the assets in it; blocks of a doc share it."""
    made: dict[str, Path] = {}
    return made


def workspace(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, doc: str) -> Path:
    if doc not in folders:
        folder = tmp_path_factory.mktemp(f"docs-{doc}")
        subprocess.run([sys.executable, str(ROOT / "docs" / "cookbook_assets" / "make_assets.py"), str(folder)],
                       check=True)
        folders[doc] = folder
    return folders[doc]


def dry_parse(code: str) -> list[list[str]]:
    """Every ``visiontrain …`` command of a block, parsed by the real parser (SystemExit if one is wrong)."""
    from visiontrain.cli import build_parser

    parsed = []
    joined = code.replace("\\\n", " ")
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")  # quotes may hold ; and |
        lexer.whitespace_split = True
        tokens = list(lexer)
        starts = [0] + [i + 1 for i, t in enumerate(tokens) if t in (";", "&&", "||", "|", "&")]
        for start, end in zip(starts, [*starts[1:], len(tokens) + 1], strict=True):
            words = tokens[start:end - 1]
            for i, word in enumerate(words):
                if (i == 0 and Path(word).name == "visiontrain") or (word == "visiontrain" and words[i - 1] == "-m"):
                    build_parser().parse_args(words[i + 1:])
                    parsed.append(words[i + 1:])
                    break
    return parsed


def run_block(block: Block, folder: Path, runner: Runner) -> None:
    if block.file is not None:
        (folder / block.file).write_text(block.code, encoding="utf-8")
        return
    if not block.runs:
        if block.lang == "bash":
            assert dry_parse(block.code), f"{block.id}: a block not run must show a visiontrain command"
            assert block.code.startswith(_NO_RUN_LINE), f"{block.id}: say why it is not run: {_NO_RUN_LINE}: …"
        elif block.lang == "python":
            compile(block.code, block.id, "exec")
        return
    timeout = float(block.attrs.get("timeout", 240))
    if block.lang == "bash":
        code, out = runner.bash(block.code, folder, timeout)
    else:
        code, out = runner.python(block.code, folder, f"L{block.line}", timeout)
    want = int(block.attrs.get("exit", 0))
    assert code == want, f"{block.id}: exit code {code}, expected {want}; output:\n{out}"
    if want:
        assert "Traceback" not in out, f"{block.id}: a user error must be one line, not a traceback:\n{out}"
    if block.expected is not None:
        missing = missing_lines(block.expected, out)
        assert not missing, f"{block.id}: these documented lines were not printed:\n" + "\n".join(
            missing) + f"\n--- actual output ---\n{out}"


def _params(doc: str, *marks: pytest.MarkDecorator) -> list:
    return [pytest.param(b, id=b.id, marks=marks) for b in doc_blocks(doc) if b.lang in ("bash", "python", "yaml")]


def test_every_cookbook_command_parses() -> None:
    """The default tier's check of the cookbook: each ``visiontrain`` command shown parses with today's flags.

    Running the recipes (they share one folder and build on each other, ~2 minutes) is the slow tier's job."""
    commands = [dry_parse(b.code) for b in doc_blocks("cookbook") if b.lang == "bash"]
    assert sum(map(len, commands)) >= 40


@pytest.mark.parametrize("block", _params("cookbook", pytest.mark.slow))
def test_cookbook(block: Block, runner: Runner, folders: dict[str, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> None:
    run_block(block, workspace(folders, tmp_path_factory, "cookbook"), runner)


def test_every_multilabel_doc_command_parses() -> None:
    """docs/multilabel.md's commands parse with today's flags (its blocks run in the slow tier, below)."""
    commands = [dry_parse(b.code) for b in doc_blocks("multilabel") if b.lang == "bash"]
    assert sum(map(len, commands)) >= 6


@pytest.mark.parametrize("block", _params("multilabel", pytest.mark.slow))
def test_multilabel_doc(block: Block, runner: Runner, folders: dict[str, Path],
                        tmp_path_factory: pytest.TempPathFactory) -> None:
    run_block(block, workspace(folders, tmp_path_factory, "multilabel"), runner)


@pytest.mark.parametrize("block", _params("api"))
def test_api_doc(block: Block, runner: Runner, folders: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> None:
    run_block(block, workspace(folders, tmp_path_factory, "api"), runner)


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id) for b in doc_blocks("readme") if b.lang == "python"])
def test_readme_python(block: Block, runner: Runner, folders: dict[str, Path],
                       tmp_path_factory: pytest.TempPathFactory) -> None:
    run_block(block, workspace(folders, tmp_path_factory, "readme"), runner)


def test_readme_first_screen() -> None:
    """The two set-up commands come first, as they are; every visiontrain command shown parses; links resolve."""
    blocks = doc_blocks("readme")
    assert [b.code.strip() for b in blocks[:2]] == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/visiontrain train",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q"]
    _title, setup = DOCS["readme"].read_text(encoding="utf-8").split("\n## ")[:2]  # the first screen
    assert setup.startswith("Set up") and "$ visiontrain train" in setup
    assert all(f"(docs/{page}.md)" in setup for page in ("cookbook", "api", "training", "data", "models", "use"))
    for block in blocks:
        if block.lang == "bash" and "visiontrain" in block.code:
            assert dry_parse(block.code), block.id


def test_readme_says_how_to_install_the_cpu_only_torch_first() -> None:
    """Before the set-up command pulls ~5.6 GB of CUDA wheels: PyTorch's CPU index, for every dependency from it."""
    setup = DOCS["readme"].read_text(encoding="utf-8").split("\n## ")[1]
    line = next((ln for ln in re.findall(r"`([^`]*--index-url[^`]*)`", setup)), "")
    assert line.startswith("python3 -m venv .venv && .venv/bin/pip install ")
    assert line.endswith(" --index-url https://download.pytorch.org/whl/cpu")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    deps = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.M | re.S)[1]
    torch_family = {m for m in re.findall(r'"(torch\w*)[<>=]', deps) if m in ("torch", "torchvision", "torchaudio")}
    assert torch_family == {"torch", "torchvision"} and set(line.split()) >= torch_family
    assert setup.index("--index-url") > setup.index(".venv/bin/pip install -e . &&")  # after the command it prepares


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (CJK kept), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", ["cookbook", "api", "readme", "multilabel"])
def test_links_resolve(doc: str) -> None:
    """Every relative link of the page points at a file that exists, and at a heading that exists there."""
    path = DOCS[doc]
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part) if file_part else path
        assert linked.exists(), f"{doc}: link to missing {target}"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", _FENCE.sub("", linked.read_text(encoding="utf-8")), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{doc}: no heading for #{anchor} in {linked.name}"
