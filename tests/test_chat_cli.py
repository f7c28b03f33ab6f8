"""``edgekit chat``: the real CLI driven in a pseudo-terminal and through pipes, with SmolLM2-135M-Instruct."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.chatui import lineinput
from edgekit.chatui.settings import ChatSettings, parse_assignment
from edgekit.errors import EdgekitError

QUESTION = "What is the capital of France?"
# SmolLM2's template adds its own default system prompt when there is none; with this one
# the 135M model answers the question above with Paris at temperature 0.
SYSTEM = "You are a helpful AI assistant."
ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # any CSI sequence: colours, cursor moves
STATS = re.compile(r"tok/s \(\d+ tokens\)")
PROMPT = ">>> "


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path, monkeypatch):
    """The CLI runs with an empty Hugging Face cache of its own: never the user's (EDGEKIT_HOME is isolated by
    conftest.py; _env passes both to the subprocess)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "EDGEKIT_DEBUG")}
    env.update(HF_HUB_OFFLINE="1", COLUMNS="200", TERM="xterm-256color", **extra)
    return env


def _run(args: list[str], input: str | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", "chat", *args], input=input, text=True,
                          capture_output=True, env=_env(**env), timeout=180,
                          stdin=None if input is not None else subprocess.DEVNULL)


# --- light, no model --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["chat", "--help"]])
def test_help_does_not_import_llama_cpp(argv):
    code = ("import sys\nfrom edgekit.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('LOADED' if any(m.split('.')[0] in ('llama_cpp', 'numpy') for m in sys.modules) else 'LIGHT')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("LIGHT")
    if argv[0] == "chat":
        for option in ("--system", "--ctx", "--kv-cache", "--temp", "--top-p", "--top-k", "--min-p",
                       "--repeat-penalty", "--seed", "--max-tokens", "--prompt", "--json", "--quiet", "--threads"):
            assert option in out.stdout


def test_set_parses_aliases_and_refuses_bad_values():
    assert parse_assignment("temp", "0") == ("temperature", 0.0)
    assert parse_assignment("max-tokens", "12") == ("max_tokens", 12)
    assert parse_assignment("seed", "random") == ("seed", None)
    with pytest.raises(EdgekitError, match="top_p"):
        parse_assignment("top_p", "1.5")
    with pytest.raises(EdgekitError, match="Did you mean temp"):
        parse_assignment("tmep", "1")
    with pytest.raises(EdgekitError):
        parse_assignment("max_tokens", "many")
    settings = ChatSettings.from_dict({"temperature": 0, "max_tokens": 7, "unknown": 1})
    assert (settings.temperature, settings.max_tokens) == (0, 7)


def test_multiline_block_and_ctrl_c_at_prompt():
    lines = iter(['"""first', "second", 'third"""'])
    assert lineinput.read_message(lambda _p: next(lines), ">>> ", "... ") == "first\nsecond\nthird"
    assert lineinput.read_message(lambda _p: '"""one line"""', ">>> ", "... ") == "one line"

    def interrupted(_prompt):
        raise KeyboardInterrupt

    with pytest.raises(lineinput.Cleared):
        lineinput.read_message(interrupted, ">>> ", "... ")


def test_json_without_a_message_is_refused_before_loading():
    out = _run(["/nonexistent.gguf", "--json"])
    assert out.returncode == 1
    assert "Nothing to answer" in out.stderr or "--json" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["151645", "x=100", "151645=much"])
def test_a_bad_logit_bias_is_one_line_before_loading(value):
    out = _run(["/nonexistent.gguf", "-p", "hi", "--logit-bias", value])
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"Bad --logit-bias '{value}'." in lines[0] and "TOKEN_ID=BIAS" in lines[0], out.stderr


def test_offline_default_model_says_how_to_pass_a_local_model():
    out = _run(["--prompt", "hi"])
    assert out.returncode == 1, out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "edgekit chat path/to/model.gguf" in lines[0]
    assert "Traceback" not in out.stderr


# --- one-shot with the real model -------------------------------------------------------------------


@pytest.mark.slow
def test_piped_one_shot_prints_only_the_answer(smollm2_gguf):
    out = _run([str(smollm2_gguf), "-s", SYSTEM, "--temp", "0", "--max-tokens", "24"], input=QUESTION + "\n")
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout
    assert not STATS.search(out.stdout) and ">>>" not in out.stdout
    assert STATS.search(out.stderr)  # the stats line goes to stderr
    assert not ESCAPE.search(out.stdout + out.stderr)  # not a terminal: no escape codes at all


@pytest.mark.slow
def test_json_output_has_answer_and_stats(smollm2_gguf):
    out = _run([str(smollm2_gguf), "--prompt", QUESTION, "--system", SYSTEM, "--temp", "0", "--max-tokens", "24",
                "--json"])
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert "Paris" in data["answer"]
    assert data["stats"]["gen_tokens"] > 0 and data["stats"]["ttft_s"] > 0
    assert data["settings"]["temperature"] == 0


@pytest.mark.slow
def test_quiet_one_shot_has_no_stats(smollm2_gguf):
    out = _run([str(smollm2_gguf), "-p", QUESTION, "--temp", "0", "-n", "8", "--quiet"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and not STATS.search(out.stderr)


@pytest.mark.slow
def test_a_closed_stdout_stops_quietly(smollm2_gguf):
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "chat", str(smollm2_gguf), "-s", SYSTEM, "-n", "300",
                             "-p", "Tell me a long story about a lighthouse keeper."],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_env())
    assert proc.stdout.read(1)  # the answer has started: now the reader goes away, as `| head -c 1` would
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=180) == 1  # click's EPIPE handling: exit 1, nothing on stderr
    assert "Traceback" not in err and "Error" not in err and "Exception" not in err


@pytest.mark.slow
def test_checkpoint_dir_is_converted_once_then_cached(smollm2_hf_dir):
    args = [str(smollm2_hf_dir), "-s", SYSTEM, "-p", QUESTION, "--temp", "0", "-n", "24"]
    first = _run(args)
    assert first.returncode == 0, first.stderr
    assert "France" in first.stdout  # 135M at 4 bits is rougher than the Q4_1 file, but on topic
    assert re.match(r"\d+\.\d+ s to first token", first.stderr) and not ESCAPE.search(first.stderr)  # no bar residue
    converted = list((Path(os.environ["EDGEKIT_HOME"]) / "cache" / "models").rglob("*.gguf"))
    assert len(converted) == 1 and "q4-best" in str(converted[0]).lower()  # the default: auto, i.e. q4-best
    mtime = converted[0].stat().st_mtime_ns
    again = _run(args)  # the cached GGUF is used: no second conversion
    assert again.returncode == 0 and again.stdout == first.stdout
    assert converted[0].stat().st_mtime_ns == mtime
    assert list((Path(os.environ["EDGEKIT_HOME"]) / "cache" / "models").rglob("*.gguf")) == converted


# --- the interactive REPL in a pseudo-terminal ------------------------------------------------------


def _spawn(gguf: Path, *args: str, **env: str):
    pexpect = pytest.importorskip("pexpect")
    argv = ["-m", "edgekit", "chat", str(gguf), "--system", SYSTEM, *args]
    child = pexpect.spawn(sys.executable, argv, env=_env(**env),
                          encoding="utf-8", timeout=90, dimensions=(50, 200))
    child.logfile_read = io.StringIO()  # everything the terminal showed
    child.expect_exact(PROMPT)
    return child


def _ask(child, text: str) -> str:
    """Send a message, wait for the answer's stats line and the next prompt; return what was shown."""
    child.sendline(text)
    child.expect(STATS)
    shown = child.before
    child.expect_exact(PROMPT)
    return shown


def _command(child, line: str, until: str) -> str:
    child.sendline(line)
    child.expect_exact(until)
    shown = child.before + child.after
    child.expect_exact(PROMPT)
    return shown


@pytest.mark.slow
@pytest.mark.pty
def test_interactive_session(smollm2_gguf, tmp_path):
    child = _spawn(smollm2_gguf, "--temp", "0.7", "--max-tokens", "24", NO_COLOR="1")
    try:
        _command(child, "/set temp 0", "temperature = 0")
        assert "Paris" in _ask(child, QUESTION)

        assert "time to first token" in _command(child, "/stats", "decode speed")
        child.send("/cont\t")  # tab completes slash commands
        assert "1 turn kept" in _command(child, "", "(always kept)")

        _command(child, "/sytem", "Did you mean /system?")
        _command(child, f"/system {SYSTEM} Answer in one short sentence.", "System prompt set.")
        _command(child, "/system", "one short sentence")

        # multi-line input: the block is one message
        child.sendline('"""')
        child.expect_exact("... ")
        child.sendline("Name the capital of France.")
        child.expect_exact("... ")
        child.sendline('Answer with one word."""')
        child.expect(STATS)
        assert "Paris" in child.before
        child.expect_exact(PROMPT)

        saved = tmp_path / "conv.json"
        _command(child, f"/save {saved}", "Saved 2 turn(s)")
        data = json.loads(saved.read_text())
        assert data["messages"][2] == {"role": "user", "content": "Name the capital of France.\nAnswer with one word."}
        assert data["sampling"]["temperature"] == 0 and data["system"].endswith("one short sentence.")

        _command(child, "/reset", "Conversation cleared")
        _command(child, "/context", "0 turns kept")
        _command(child, "/set max_tokens 3", "max_tokens = 3")
        loaded = _command(child, f"/load {saved}", "Loaded 2 turn(s)")
        assert str(saved) in loaded
        _command(child, "/context", "2 turns kept")
        # the saved settings came back with it (max_tokens 24, not 3)
        _command(child, "/set", "max_tokens = 24")
        _command(child, "/system", "one short sentence")

        retried = _ask(child, "/retry")
        assert "Paris" in retried  # temperature 0: the same answer again

        child.sendeof()  # Ctrl-D exits
        child.expect(__import__("pexpect").EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert not re.search(r"\x1b\[[0-9;]*m", child.logfile_read.getvalue())  # NO_COLOR: no colour codes
    history = Path(os.environ["EDGEKIT_HOME"]) / "data" / "chat_history"
    assert QUESTION in history.read_text()


@pytest.mark.slow
@pytest.mark.pty
def test_ctrl_c_stops_the_answer_and_keeps_it(smollm2_gguf, tmp_path):
    child = _spawn(smollm2_gguf, "--temp", "0", "--max-tokens", "400")
    try:
        story = "Write a long story about a dragon and a knight."
        child.sendline(story)
        child.expect_exact(story + "\r\n")  # the echo of the line typed
        child.expect(r"\S+\s+\S+\s+\S+\s+\S+\s+\S+\s")  # a few words into a long answer
        child.send("\x03")
        child.expect_exact("stopped")
        child.expect_exact(PROMPT)
        saved = tmp_path / "partial.json"
        _command(child, f"/save {saved}", "Saved 1 turn(s)")
        messages = json.loads(saved.read_text())["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"]
        partial = messages[1]["content"]
        assert len(partial.split()) >= 5  # what was shown is kept as the answer
        assert len(partial.split()) < 250  # ...and generation did stop early

        # Ctrl-C at the prompt clears the line; the next question gets an answer
        child.send("half a line")
        child.send("\x03")
        child.expect_exact(PROMPT)
        child.sendline("/set max_tokens 24")
        child.expect_exact(PROMPT)
        _command(child, "/reset", "Conversation cleared")
        assert "Paris" in _ask(child, QUESTION)
        child.sendline("/exit")
        child.expect(__import__("pexpect").EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
@pytest.mark.pty
def test_saved_conversation_resumes_with_its_kv_state(smollm2_gguf, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    saved = tmp_path / "resume.json"
    child = _spawn(smollm2_gguf, "--temp", "0", "--max-tokens", "24", NO_COLOR="1")
    try:
        assert "Paris" in _ask(child, QUESTION)
        _command(child, f"/save {saved}", "Saved 1 turn(s)")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert (tmp_path / "resume.json.kv").is_file()

    # A new process: the conversation comes back, and its KV cache with it (no prefill of the old turns).
    child = _spawn(smollm2_gguf, "--max-tokens", "5", NO_COLOR="1")
    try:
        assert "(KV state restored)" in _command(child, f"/load {saved}", "Last message")
        _command(child, "/set", "max_tokens = 24")  # the saved settings replace the command line's
        _ask(child, "And the capital of Italy?")
        stats = _command(child, "/stats", "decode speed")
        reused = int(re.search(r"reused from cache\s+(\d+)", stats).group(1))
        assert reused >= 20  # the first turn (system prompt, question, answer) was not prefilled again
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()


@pytest.mark.slow
@pytest.mark.pty
def test_full_context_says_what_was_dropped(smollm2_gguf):
    child = _spawn(smollm2_gguf, "--temp", "0", "--max-tokens", "16", "--ctx", "256", NO_COLOR="1")
    filler = "Here is some context about my day, which was long and full of small events. " * 3
    try:
        shown = ""
        for city in ("Paris", "Rome", "Madrid", "Berlin", "Vienna"):
            shown += _ask(child, f"{filler}Tell me one fact about {city}.")
            if "Context full" in shown:
                break
        assert "Context full: dropped the 1 oldest turn" in shown
        assert "dropped earlier to fit" in _command(child, "/context", "(always kept)")
        child.sendline("/exit")
        child.expect(__import__("pexpect").EOF)
    finally:
        child.close()


@pytest.mark.slow
@pytest.mark.pty
def test_ctrl_c_during_a_long_prefill_stops_at_once(smollm2_gguf):
    import resource

    import psutil

    pexpect = pytest.importorskip("pexpect")
    # Ready when the run has used more CPU time than a whole short answer does (start-up, load, one token):
    # then it is prefilling, which for this prompt takes several times that. CPU time, unlike wall time,
    # doesn't stretch when the machine is busy.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert _run([str(smollm2_gguf), "-p", "Hi", "-n", "1", "-q"]).returncode == 0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    short_run = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    long_prompt = "The weather today is mild and pleasant. " * 500 + "Summarize that."  # ~4k tokens
    child = pexpect.spawn(sys.executable, ["-m", "edgekit", "chat", str(smollm2_gguf), "-p", long_prompt, "-n", "8"],
                          env=_env(NO_COLOR="1"), encoding="utf-8", timeout=90, dimensions=(50, 200))
    try:
        proc, deadline = psutil.Process(child.pid), time.monotonic() + 120
        while sum(proc.cpu_times()[:2]) < 1.5 * short_run:
            assert child.isalive() and time.monotonic() < deadline, "never got to the prefill"
            child.expect([pexpect.TIMEOUT], timeout=0.1)  # keep reading what it draws (a load bar, maybe)
        child.send("\x03")  # one Ctrl-C is enough before the first token
        child.expect_exact("(stopped before the answer began)")
        child.expect(pexpect.EOF)
        assert "Interrupted" not in child.before  # the CLI's own stop, not a crash through main()
    finally:
        child.close()
    assert child.exitstatus == 130


@pytest.mark.slow
@pytest.mark.pty
def test_colour_only_on_a_terminal_without_no_color(smollm2_gguf):
    pexpect = pytest.importorskip("pexpect")
    child = _spawn(smollm2_gguf, "--temp", "0", "--max-tokens", "8")
    try:
        _ask(child, "Hi")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert re.search(r"\x1b\[[0-9;]*m", child.logfile_read.getvalue())  # dimmed stats line on a colour terminal
