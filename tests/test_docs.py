"""The README and docs/ show only commands, options and modules that exist.

Every ``edgekit ...`` command line in a fenced block or an inline code span is walked
through the real click command tree (``typer.main.get_command`` on :data:`edgekit.cli.app`),
and every option it shows must be an option of the command it names. An inline span that
is only options (``--kv-cache TYPE``) must name options of some edgekit command, or of
another tool listed in ``OTHER_TOOLS`` (llama.cpp's, pip's, ...). Every module named as
``python -m edgekit.X`` must be importable by name, and every ``edgekit.X.name`` the docs
mention must be defined in its module. No model is loaded: this is fast.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Options the docs show for tools other than edgekit, with the tool they belong to.
OTHER_TOOLS = {
    "-ngl": "llama-bench", "-ctk": "llama-bench", "-ctv": "llama-bench", "-fa": "llama-bench",
    "-ub": "llama-bench", "-pg": "llama-bench",
    "--tensor-type": "llama-quantize", "--kl-divergence-base": "llama-perplexity",
    "--outtype": "convert_hf_to_gguf.py",
    "--no-deps": "pip download", "--no-binary": "pip", "--no-cache-dir": "pip", "--force-reinstall": "pip",
    "-mcpu": "the C compiler", "--target": "cmake --build", "--durations": "pytest",
}
OTHER_TOOL_PREFIXES = ("-DGGML_", "-DLLAMA_", "-DCMAKE_")  # cmake definitions

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# "edgekit" as the program a shell line runs: first on the line, or after a pipe, &&, ; or `time`.
PROGRAM = re.compile(r"(?:^\s*|(?<=[$|&;(])\s*|(?<=\btime)\s+)(?:\.venv/bin/)?edgekit(?=[ \t]+\S)")
OPTION = re.compile(r"^(--?[A-Za-z][\w-]*)")
MODULE_RUN = re.compile(r"python3? -m (edgekit(?:\.\w+)*)")
DOTTED = re.compile(r"\b(edgekit(?:\.\w+)+)")
FROM_IMPORT = re.compile(r"from (edgekit(?:\.\w+)*) import ([\w, ]+)")


def _read(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _snippets(text: str) -> Iterator[tuple[str, str]]:
    """("fence", line) for each line of a non-Python fenced block, ("inline", span) for inline code."""
    for lang, body in FENCE.findall(text):
        if lang.strip() in ("python", "mermaid"):
            continue
        lines = body.replace("\\\n", " ").splitlines()
        if any(line.startswith("$ ") for line in lines):  # a transcript: only the prompt lines are commands
            lines = [line[2:] for line in lines if line.startswith("$ ")]
        for line in lines:
            yield "fence", line
    for span in INLINE.findall(FENCE.sub("", text)):
        yield "inline", span


def _command_lines() -> list[tuple[str, str]]:
    """(page, the text after `edgekit`) for every edgekit command shown, up to a pipe, && or comment."""
    found = []
    for page in PAGES:
        for _, snippet in _snippets(_read(page)):
            snippet = re.sub(r"(^|\s)#.*$", "", snippet)  # shell comment
            for match in PROGRAM.finditer(snippet):
                rest = re.split(r"\s(?:\||&&|;)\s?|\s\|$", snippet[match.end():])[0]
                found.append((page.name, rest.strip()))
    return found


def _tokens(text: str) -> list[str]:
    text = text.replace("[", " ").replace("]", " ").replace("…", " ")
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote in a usage line
        return text.split()


def _root() -> tuple[Any, Any]:
    import edgekit.cli

    app = edgekit.cli.app
    assert isinstance(app, typer.Typer)
    command = typer.main.get_command(app)
    return command, command.context_class(command, info_name="edgekit", **command.context_settings)


def _options(command: Any, ctx: Any) -> set[str]:
    names: set[str] = set()
    for param in command.get_params(ctx):
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def _child(command: Any, ctx: Any, name: str) -> tuple[Any, Any]:
    sub = command.commands[name]
    return sub, sub.context_class(sub, info_name=name, parent=ctx)


def _resolve(words: list[str]) -> tuple[str, Any, Any, list[str]]:
    """Walk the command tree along ``words``: (path, command, its context, the words after it)."""
    command, ctx = _root()
    path = "edgekit"
    words = list(words)
    while hasattr(command, "commands"):
        word = next((w for w in words if not w.startswith("-")), None)
        if word in command.commands:
            words.remove(word)
        elif "run" in command.commands:  # `edgekit bench MODEL` is `edgekit bench run MODEL`
            word = "run"
        elif word is None or word.isupper() or word == "X":  # `edgekit --help`, `edgekit COMMAND --help`
            return path, command, ctx, words
        else:
            raise AssertionError(f"`{path} {word}`: no such command (has: {', '.join(sorted(command.commands))})")
        command, ctx = _child(command, ctx, word)
        path += f" {word}"
    return path, command, ctx, words


def _all_options() -> set[str]:
    names: set[str] = set()
    stack = [_root()]
    while stack:
        command, ctx = stack.pop()
        names |= _options(command, ctx)
        for name in getattr(command, "commands", {}):
            stack.append(_child(command, ctx, name))
    return names


@pytest.mark.slow
def test_the_docs_show_edgekit_commands():
    lines = _command_lines()
    shown = {_resolve(_tokens(rest))[0] for _, rest in lines}
    # An extractor that finds nothing would make the next test pass vacuously.
    for command in ("edgekit convert", "edgekit chat", "edgekit bench run", "edgekit bench compare",
                    "edgekit bench plot", "edgekit bench import", "edgekit eval", "edgekit models", "edgekit demo"):
        assert command in shown, f"no example of `{command}` found in the README or docs/"


@pytest.mark.parametrize("page,rest", _command_lines(), ids=lambda v: v if isinstance(v, str) and len(v) < 60 else None)
def test_every_command_and_option_shown_exists(page, rest):
    path, command, ctx, words = _resolve(_tokens(rest))
    known = _options(command, ctx)
    for word in words:
        match = OPTION.match(word)
        if match and match.group(1) not in known:
            raise AssertionError(f"{page}: `{path}` has no option {match.group(1)} (shown in `edgekit {rest}`); "
                                 f"it has {', '.join(sorted(known))}")


def _option_spans() -> list[tuple[str, str]]:
    spans = []
    for page in PAGES:
        for kind, span in _snippets(_read(page)):
            if kind == "inline" and span.startswith("-") and not PROGRAM.search(span):
                spans.append((page.name, span))
    return spans


def test_every_option_named_alone_exists():
    spans = _option_spans()
    assert spans, "no inline option spans found: the extractor is broken"
    known = _all_options()
    unknown = []
    for page, span in spans:
        for word in re.split(r"[\s,/()]+", span):
            match = OPTION.match(word)
            if not match or word.startswith(OTHER_TOOL_PREFIXES):
                continue
            name = match.group(1)
            if name not in known and name not in OTHER_TOOLS:
                unknown.append(f"{page}: {name} (in `{span}`)")
    assert not unknown, "options shown that no edgekit command has:\n" + "\n".join(unknown)


def _module_runs() -> list[tuple[str, str]]:
    return [(page.name, m) for page in PAGES for m in MODULE_RUN.findall(_read(page))]


def test_every_python_m_module_exists():
    runs = _module_runs()
    assert runs, "no `python -m edgekit...` found: the extractor is broken"
    missing = [f"{page}: python -m {module}" for page, module in runs
               if not module.split(".")[-1].isupper() and importlib.util.find_spec(module) is None]
    assert not missing, "modules the docs run that don't exist:\n" + "\n".join(missing)


def _defines(module: str, name: str) -> bool:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    if spec.submodule_search_locations and importlib.util.find_spec(f"{module}.{name}") is not None:
        return True
    source = Path(spec.origin).read_text(encoding="utf-8") if spec.origin and spec.origin.endswith(".py") else ""
    if module == "edgekit" and name in re.findall(r'"(\w+)": "edgekit\.', source):  # the lazy public API
        return True
    if re.search(rf"^(?:def|class) {name}\b|^{name}\s*[:=]|^from \S+ import .*\b{name}\b", source, re.M):
        return True
    return any(_defines(star, name) for star in re.findall(r"^from (\S+) import \*", source, re.M))


def test_every_dotted_edgekit_name_exists():
    """`edgekit.samples.perturb.perturbed_f16` and `from edgekit.x import y`: the module and the name exist."""
    names: set[tuple[str, str]] = set()
    for page in PAGES:
        text = _read(page)
        for module, imported in FROM_IMPORT.findall(text):
            names |= {(module, n.split(" as ")[0].strip()) for n in imported.split(",") if n.strip()}
        for dotted in DOTTED.findall(text):
            parts = dotted.split(".")
            if any(p[:1].isupper() for p in parts[1:-1]):  # edgekit.Chat.load: a method, checked by its class
                parts = parts[:next(i for i, p in enumerate(parts) if p[:1].isupper()) + 1]
            if not any(p.isupper() for p in parts):  # edgekit.bench.studies.NAME: a placeholder
                names.add((".".join(parts[:-1]), parts[-1]))
    assert len(names) > 10, "too few dotted names found: the extractor is broken"
    missing = sorted(f"{m}.{n}" for m, n in names if not _defines(m, n))
    assert not missing, "names the docs mention that don't exist:\n" + "\n".join(missing)


def test_readme_test_command_is_what_ci_runs():
    readme = _read(ROOT / "README.md")
    fenced = [line for lang, body in FENCE.findall(readme) for line in body.splitlines()]
    test_lines = [line for line in fenced if line.endswith(".venv/bin/pytest -q")]
    assert len(test_lines) == 1, f"expected one fenced test command in the README, found {test_lines}"
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_lines[0] in ci_lines, ".ci/run must run the README's test command verbatim"
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/edgekit demo" in fenced


def test_docs_cite_nothing_outside_the_repo():
    """Numbers say where they come from in words; no page links to an outside document."""
    outside = [f"{page.name}: {url}" for page in PAGES for url in re.findall(r"https?://\S+", _read(page))]
    assert not outside, "\n".join(outside)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", _read(page)), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_relative_links_point_at_files_and_headings_that_exist():
    broken = []
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)]*))?\)", _read(page)):
            if target.startswith(("http:", "https:")):
                continue  # test_docs_cite_nothing_outside_the_repo reports these
            path = page.parent / target if target else page
            if not path.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.name}: {target}#{anchor} (no such heading)")
    assert not broken, "\n".join(broken)


def _inline_spans(page: Path) -> set[str]:
    return set(INLINE.findall(page.read_text()))


def test_every_test_file_is_in_the_testing_page():
    """testing.md's table names every test file (a span may be a pattern such as ``test_fuzz_*.py``)."""
    import fnmatch

    spans = {s for s in _inline_spans(ROOT / "docs" / "testing.md") if s.startswith("test_") and s.endswith(".py")}
    files = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    missing = [f for f in files if not any(fnmatch.fnmatch(f, s) for s in spans)]
    assert not missing, "test files docs/testing.md doesn't name: " + ", ".join(missing)


def test_every_module_is_in_the_architecture_page():
    """architecture.md names every module: by path or in backticks (the runtime, convert/ and bench/ by stem);
    the CLI, chat UI, server and samples packages by their folder."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    spans = _inline_spans(ROOT / "docs" / "architecture.md")
    missing = []
    for path in sorted((ROOT / "edgekit").glob("*.py")):
        if path.name not in ("__init__.py", "__main__.py") and f"edgekit/{path.name}" not in text and path.stem not in spans:
            missing.append(f"edgekit/{path.name}")
    for folder in ("edgekit/runtime", "convert", "bench"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.name != "__init__.py" and not {path.stem, path.name} & spans:
                missing.append(f"{folder}/{path.name}")
    for package in ("cli", "chatui", "serve", "samples"):
        if f"edgekit/{package}/" not in text:
            missing.append(f"edgekit/{package}/")
    if "bench/studies/" not in text:
        missing.append("bench/studies/")
    assert not missing, "modules docs/architecture.md doesn't name: " + ", ".join(missing)
