"""Every Python and shell snippet of the README and docs/ is a file under examples/, shown
verbatim (`<!-- file: examples/... -->` before its fence), and runs here as a user would run it:
against a broker started by examples/readme/serve.sh, warnings as errors. A snippet that cannot
run here says so and why (`<!-- not run: <reason> -->`: redis-cli recipes for an operator's own
Redis, the benchmark)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client_sdk_support import REPO, free_port
from tests.support import read, redis_settings, running_broker
from tests.tools import need_tool

DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
SNIPPET_LANGUAGES = {"python", "py", "sh", "bash", "shell", "console"}
# Run by .ci/run (they install the package and run this very suite), not from inside it.
RUN_BY_CI = ["examples/readme/install.sh", "examples/readme/test.sh"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.M | re.S)
MARKER = re.compile(r"<!-- (file|not run): (.+?) -->\n$")


def snippets(doc: str) -> Iterator[tuple[str, str, tuple[str, str] | None, int]]:
    """(language, text, its marker (kind, value) or None, line) of each fenced block."""
    text = (REPO / doc).read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        marker = MARKER.search(before[-300:])
        kind_value = (marker.group(1), marker.group(2)) if marker else None
        yield match.group(1), match.group(2), kind_value, before.count("\n") + 1


def test_every_snippet_is_an_example_file_shown_verbatim() -> None:
    shown: set[str] = set()
    problems: list[str] = []
    for doc in DOCS:
        for language, body, marker, line in snippets(doc):
            if language not in SNIPPET_LANGUAGES or (marker is not None and marker[0] != "file"):
                continue
            if marker is None:
                problems.append(f"{doc}:{line}: a ```{language} block without a file marker")
                continue
            path = marker[1]
            shown.add(path)
            file = REPO / path
            if not file.is_file():
                problems.append(f"{doc}:{line}: {path} does not exist")
            elif file.read_text(encoding="utf-8") != body:
                problems.append(f"{doc}:{line}: differs from {path} (keep them identical)")
    assert not problems, "\n".join(problems)
    examples = {
        str(p.relative_to(REPO))
        for folder in ("examples/readme", "examples/python", "examples/worker")
        for p in (REPO / folder).iterdir()
        if p.suffix in (".py", ".sh") and p.name != "backend.py"
    }
    assert examples <= shown, f"examples no doc shows: {sorted(examples - shown)}"


def test_ci_runs_the_install_and_test_snippets_as_they_are() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    for path in RUN_BY_CI:
        assert f". {path}" in ci, f".ci/run must run {path} (the README shows it)"


# --- running them -----------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.pop("UNBROKEN_SECRET", None)
    return env


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """examples/readme/serve.sh, on a free port (UNBROKEN_PORT) instead of 8080."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        ["bash", "examples/readme/serve.sh"],
        cwd=REPO,
        env=_env(UNBROKEN_PORT=str(port), UNBROKEN_OPEN_RATE="1000", UNBROKEN_OPEN_BURST="1000"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, "serve.sh exited"
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, "serve.sh's broker never became healthy"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def run(
    command: list[str], broker: str, *, cwd: Path = REPO, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env=_env(UNBROKEN_URL=broker, UNBROKEN_BROKER_URL=broker, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def python(path: str, broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    # -W error: a ResourceWarning ("Unclosed client session") or any other warning shows up on
    # stderr, which must stay empty.
    result = run([sys.executable, "-W", "error", path, *args], broker)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return result


def open_channel(broker: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{broker}/v1/channels", method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        opened: dict[str, Any] = json.load(resp)
        return opened


def events_of(broker: str, opened: dict[str, Any]) -> list[tuple[str, Any]]:
    url = f"{broker}/v1/channels/{opened['id']}/poll?timeout=1&token={opened['read_token']}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    return [(event["type"], event["data"]) for event in body["events"]]


def test_curl_sh(broker: str) -> None:
    need_tool("curl")
    result = run(["bash", "examples/readme/curl.sh"], broker, timeout=30)
    assert result.returncode == 0, result.stderr
    blocks = [b for b in result.stdout.split("\n\n") if b.strip()]
    assert blocks[0] == "retry: 1000"
    parsed = [dict(line.split(": ", 1) for line in b.splitlines()) for b in blocks[1:]]
    assert [(p["event"], json.loads(p["data"])) for p in parsed] == [
        ("message", {"a": 1}),
        ("message", {"a": 2}),
        ("end", {"a": 5}),
    ]


@pytest.mark.parametrize("name", ["write_channel.py", "write_channel_plain.py"])
def test_backend_examples_write_and_end_without_warnings(broker: str, name: str) -> None:
    opened = open_channel(broker)
    python(f"examples/readme/{name}", broker, json.dumps(opened["channel_token"]))
    assert events_of(broker, opened) == [
        ("message", {"a": 1}),
        ("message", {"a": 2}),
        ("end", {"a": 5}),
    ]


def test_stream_reply(broker: str) -> None:
    opened = open_channel(broker)
    out = python(
        "examples/worker/stream_reply.py", broker, json.dumps(opened["channel_token"]), "hi"
    )
    assert out.stdout == "answered\n"
    events = events_of(broker, opened)
    assert "".join(data["delta"] for kind, data in events[:-1]) == (
        "You asked: hi. Here is a long answer, one word at a time. "
    )
    assert events[-1] == ("end", None)


def test_stream_reply_stops_quietly_when_the_app_cancels(broker: str) -> None:
    opened = open_channel(broker)
    token = json.dumps(opened["channel_token"])
    backend = subprocess.Popen(
        [sys.executable, "-W", "error", "examples/worker/stream_reply.py", token, "hi"],
        cwd=REPO,
        env=_env(UNBROKEN_BROKER_URL=broker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"{broker}/v1/channels/{opened['id']}/poll?timeout=10&token={opened['read_token']}"
        with urllib.request.urlopen(url, timeout=20) as resp:  # until the first word is there
            assert json.load(resp)["events"]
        request = urllib.request.Request(
            f"{broker}/v1/channels/{opened['id']}/cancel",
            method="POST",
            headers={"Authorization": f"Bearer {opened['read_token']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 201
        out, err = backend.communicate(timeout=30)
    finally:
        backend.kill()
    assert (backend.returncode, out, err) == (0, "stopped by the app\n", "")
    assert events_of(broker, opened)[-1] == ("cancelled", {"reason": None})


def test_one_shot(broker: str) -> None:
    first, second = open_channel(broker), open_channel(broker)
    tokens = [json.dumps(opened["channel_token"]) for opened in (first, second)]
    out = python("examples/worker/one_shot.py", broker, *tokens).stdout
    assert events_of(broker, first) == [("message", {"delta": "Hi"}), ("end", {"done": True})]
    assert re.fullmatch(r"\d+-\d+\n", out)
    kinds = events_of(broker, second)
    assert kinds[0] == ("message", {"delta": "Hi"}) and kinds[1][0] == "error"
    assert kinds[1][1]["message"] == "the model did not answer"


async def test_append_direct(redis_url: str) -> None:
    settings = redis_settings(redis_url)
    async with running_broker(settings) as running:
        opened = await running.open()
        result = await asyncio.to_thread(
            run,
            [sys.executable, "-W", "error", "examples/worker/append_direct.py", opened["id"]],
            running.url,
            UNBROKEN_REDIS_URL=redis_url,
            UNBROKEN_REDIS_PREFIX=settings.redis_prefix,
        )
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert (
            result.stdout.startswith("AppendResult(ids=['") and "duplicate=False" in result.stdout
        )
        received = await read(running.session, opened, "poll", stop_after=1)
        assert received.messages == [{"a": 1}]


WORDS = ["{'delta': 'word0 '}", "{'delta': 'word1 '}", "{'delta': 'word2 '}"]


def test_open_and_read(broker: str) -> None:
    out = python("examples/python/open_and_read.py", broker).stdout.splitlines()
    assert out == [*WORDS, "final: {'words': 3}"]


def test_subscribe(broker: str) -> None:
    out = python("examples/python/subscribe.py", broker).stdout.splitlines()
    assert out == [f"message {w} after True" for w in WORDS] + ["ended {'words': 3}"]


def test_stop(broker: str) -> None:
    out = python("examples/python/stop.py", broker).stdout.splitlines()
    # Words the backend wrote while the cancel was on its way may still arrive; then it stops.
    assert out[:3] == WORDS and out[-1] == "cancelled user pressed stop"
    assert len(out) < 20, out


def test_sync_read(broker: str) -> None:
    out = python("examples/python/sync_read.py", broker).stdout.splitlines()
    assert out == ["{'delta': 'hello'}", "{'words': 1}"]


async def test_resume_after_a_kill(broker: str, tmp_path: Path) -> None:
    store = tmp_path / "session.json"
    env = _env(UNBROKEN_BROKER_URL=broker)
    first = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "error", "examples/python/resume.py", str(store),
        cwd=REPO, env=env, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert first.stdout is not None
    shown = [(await asyncio.wait_for(first.stdout.readline(), 20)).decode() for _ in range(3)]
    first.send_signal(signal.SIGKILL)  # the app dies mid-answer; its backend goes on
    await first.wait()
    shown += (await first.stdout.read()).decode().splitlines(keepends=True)
    assert shown[:3] == [f"{{'delta': 'word{i} '}}\n" for i in range(3)]
    last_shown = len(shown) - 1
    second = await asyncio.to_thread(python, "examples/python/resume.py", broker, str(store))
    rest = second.stdout.splitlines()
    assert rest[-1] == "final: {'words': 40}"
    # Exactly the rest: at most the message in hand at the kill comes again, none is skipped.
    words = [int(line.split("word")[1].split(" ")[0]) for line in rest[:-1]]
    assert words == list(range(words[0], 40)) and words[0] in (last_shown, last_shown + 1), (
        shown,
        rest,
    )
    assert not store.exists()


def test_redis_sh(redis_url: str, tmp_path: Path) -> None:
    need_tool("curl")
    need_tool("openssl")
    (tmp_path / "examples").symlink_to(REPO / "examples")  # it writes unbroken.key in its cwd
    port = free_port()
    result = run(
        ["bash", "examples/readme/redis.sh"],
        f"http://127.0.0.1:{port}",
        cwd=tmp_path,
        UNBROKEN_PORT=str(port),
        UNBROKEN_REDIS_URL=redis_url,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ['{"a": 1}', '{"a": 2}']
    assert re.fullmatch(r"ch_\S+\tended\t3 messages\tlast \d+-\d+", lines[2]), lines
    assert 'ended: {"a": 5}' in result.stderr
    assert (tmp_path / "unbroken.key").stat().st_mode & 0o077 == 0
