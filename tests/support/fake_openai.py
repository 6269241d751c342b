"""A real loopback HTTP server that speaks the OpenAI chat-completions protocol, with logprobs.

Tests of the LLM scorer point their client at ``FakeOpenAIServer().base_url``. Each chat request is
answered in a *mode*: the next entry of ``script`` (consumed FIFO), else ``default_mode``:

ok, no_logprobs (content but ``"logprobs": null``), reject_logprobs (HTTP 400 when logprobs are asked
for, else like ok), 429 (with ``Retry-After``), 429_no_header, 500, hang (waits ``hang_seconds``,
then like ok), garbage (200, body is not JSON), empty (200, ``"choices": []``), bad_key (200, an
answer that is not one of the prompt's keys), injection (200, a chatty answer with no key in it),
echo (like ``transformers serve`` with some chat templates: ``"logprobs": null`` whatever was asked,
and ``content`` is the rendered prompt, every message, before the answer).

Answers follow the prompts of ``shared.llm.prompts``: yes/no questions, one letter per class, or JSON
votes. ``answer_fn(messages) -> {token: probability}`` replaces the default guess, which picks the
class whose name occurs in the text. Only the standard library is used.

Run alone: ``python -m tests.support.fake_openai --port 8765 --mode ok`` (prints ``ready <url>``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("ok", "no_logprobs", "reject_logprobs", "429", "429_no_header", "500", "hang",
         "garbage", "empty", "bad_key", "injection", "echo")
_CLASS_LINE = re.compile(r"^([A-Za-z]|\d+)\. (.+?)( - .*)?$")  # digits: label sets over 52 classes
_NOT_KEYS = ("Z", "?", "The", "Answer", "**")


def _content(messages: list[dict], role: str) -> str:
    """The content of the last message with ``role`` ('' when there is none)."""
    found = [m.get("content") or "" for m in messages if isinstance(m, dict) and m.get("role") == role]
    return str(found[-1]) if found else ""


def _framed_text(user: str) -> tuple[str, str]:
    """(the text between <<< and >>>, what follows >>>) of a user message."""
    start, end = user.find("<<<"), user.rfind(">>>")
    if start < 0 or end < start:
        return user, ""
    return user[start + 3:end].strip(), user[end + 3:]


def _classes(system: str) -> list[tuple[str, str]]:
    """(key, name) pairs from the class list of a system message (few-shot examples left out)."""
    if "Classes:\n" in system:
        system = system.split("Classes:\n", 1)[1].split("\n\n", 1)[0]
    return [(m.group(1), m.group(2).strip()) for m in map(_CLASS_LINE.match, system.splitlines()) if m]


def default_answer(messages: list[dict]) -> dict[str, float]:
    """yes/no: 0.8 'yes' when the class name occurs in the text; keys: 0.7 on the first key whose name
    occurs in the text (else the first key), the other keys share 0.3."""
    user, system = _content(messages, "user"), _content(messages, "system")
    text, after = _framed_text(user)
    if "Answer yes or no" in user:
        line = next((ln for ln in after.splitlines() if ln.startswith("Class: ")), "Class: ")
        name = line[len("Class: "):].split(" - ", 1)[0].strip()
        p_yes = 0.8 if name and name.lower() in text.lower() else 0.2
        return {"yes": p_yes, "no": 1.0 - p_yes}
    classes = _classes(system)
    if not classes:
        return {"A": 1.0}
    if len(classes) == 1:
        return {classes[0][0]: 1.0}
    chosen = next((k for k, n in classes if n.lower() in text.lower()), classes[0][0])
    return {k: 0.7 if k == chosen else 0.3 / (len(classes) - 1) for k, _ in classes}


def keyword_answer(keywords: dict[str, list[str]], *, confidence: float = 0.9):
    """An ``answer_fn`` for single-label prompts: the class with most of its keywords in the text
    gets ``confidence``; no keyword at all gives a uniform answer. An informative LLM for tests."""
    def answer(messages: list[dict]) -> dict[str, float]:
        text = _framed_text(_content(messages, "user"))[0].lower()
        classes = _classes(_content(messages, "system"))
        if len(classes) < 2:
            return default_answer(messages)
        hits = {key: sum(word in text for word in keywords.get(name, ())) for key, name in classes}
        best = max(hits, key=hits.get)
        if hits[best] == 0:
            return {key: 1.0 / len(classes) for key, _ in classes}
        return {key: confidence if key == best else (1.0 - confidence) / (len(classes) - 1) for key, _ in classes}
    return answer


def echo_prompt(messages: list[dict]) -> str:
    """The prompt as a chat template renders it once its special tokens are decoded away
    (``system\n...\nuser\n...\nassistant\n``): what an echoing server puts before its answer."""
    turns = "".join(f"{m.get('role')}\n{m.get('content') or ''}\n" for m in messages if isinstance(m, dict))
    return f"{turns}assistant\n"


def _entry(token: str, p: float) -> dict:
    return {"token": token, "logprob": math.log(p), "bytes": list(token.encode("utf-8"))}


def _logprobs(dist: dict[str, float], top_n: int) -> dict:
    """The ``logprobs`` of a choice whose one content token is the most probable of ``dist``."""
    ranked = sorted(((t, p) for t, p in dist.items() if p > 0), key=lambda tp: -tp[1])
    first = dict(_entry(*ranked[0]), top_logprobs=[_entry(t, p) for t, p in ranked[:top_n]])
    return {"content": [first]}


def _error(message: str, kind: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


class FakeOpenAIServer:
    """OpenAI-compatible chat server on loopback; see the module docstring for the modes."""

    def __init__(self, *, host="127.0.0.1", port=0, default_mode="ok", hang_seconds=5.0,
                 retry_after="1", answer_fn=None):
        if default_mode not in MODES:
            raise ValueError(f"unknown mode {default_mode!r}; known: {MODES}")
        self.host, self.port, self.default_mode = host, port, default_mode
        self.hang_seconds, self.retry_after, self.answer_fn = hang_seconds, str(retry_after), answer_fn
        self.script: list[str] = []
        self.fault: tuple[str, float] = ("ok", 0.0)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def set_script(self, modes: list[str]) -> None:
        """Replace the queue of per-request modes (thread-safe)."""
        with self.lock:
            self.script = list(modes)

    def fail_for(self, mode: str, seconds: float) -> None:
        """Answer every request in ``mode`` for the next ``seconds`` (after the script), then recover."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
        with self.lock:
            self.fault = (mode, time.time() + seconds)

    def _next_mode(self) -> str:
        with self.lock:
            if self.script:
                return self.script.pop(0)
            mode, until = self.fault
            return mode if time.time() < until else self.default_mode

    def _record(self, path: str, body, mode) -> None:
        with self.lock:
            self.requests.append({"time": time.time(), "path": path, "body": body, "mode": mode})

    def start(self) -> "FakeOpenAIServer":
        """Listen (an ephemeral port when ``port=0``) and serve from a daemon thread."""
        server = self

        class Handler(_Handler):
            fake = server

        self._stopping.clear()
        self._httpd = _Server((self.host, self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; hanging handlers are woken and drop their connections without answering."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2)
        self._httpd = self._thread = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the default backlog of 5 resets bursts of concurrent clients

    def handle_error(self, request, client_address) -> None:
        """Clients that time out and hang up are expected here: say nothing."""


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer  # set by FakeOpenAIServer.start on a subclass

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def _send(self, status: int, payload, headers: dict | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self) -> None:
        self.fake._record(self.path, None, None)
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        else:
            self._send(404, _error(f"no route {self.path}", "not_found_error"))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.fake._record(self.path, None, None)
            return self._send(404, _error(f"no route {self.path}", "not_found_error"))
        try:
            body = json.loads(raw)
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                raise ValueError("the body needs a JSON object with a 'messages' list")
        except ValueError as exc:
            self.fake._record(self.path, None, "invalid_request")
            return self._send(400, _error(f"invalid request body: {exc}", "invalid_request_error"))
        mode = self.fake._next_mode()
        self.fake._record(self.path, body, mode)
        self._answer(body, mode)

    def _answer(self, body: dict, mode: str) -> None:
        wants_logprobs = bool(body.get("logprobs"))
        if mode == "429" or mode == "429_no_header":
            headers = {"Retry-After": self.fake.retry_after} if mode == "429" else {}
            return self._send(429, _error("Rate limit reached", "rate_limit_error"), headers)
        if mode == "500":
            return self._send(500, _error("The server had an error", "server_error"))
        if mode == "garbage":
            return self._send(200, b"this is not json {")
        if mode == "reject_logprobs" and (wants_logprobs or body.get("top_logprobs")):
            return self._send(400, _error("This model does not support logprobs",
                                          "invalid_request_error", "logprobs"))
        if mode not in MODES:
            return self._send(500, _error(f"fake server: unknown mode {mode!r}", "server_error"))
        if mode == "hang" and self.fake._stopping.wait(self.fake.hang_seconds):
            return  # stopped while hanging: drop the connection without an answer
        messages = body["messages"]
        system, user = _content(messages, "system"), _content(messages, "user")
        try:  # a broken answer_fn shows up as a 500 that names it, not as a dropped connection
            dist = (self.fake.answer_fn or default_answer)(messages)
            top = max(dist, key=dist.get)
        except Exception as exc:  # noqa: BLE001
            return self._send(500, _error(f"fake server: answer_fn failed: {exc!r}", "server_error"))
        keys = set(dist) | {k for k, _ in _classes(system)}
        if mode == "bad_key":
            others = [t for t in _NOT_KEYS if t not in keys]
            content, dist = others[0], {t: p for t, p in zip(others, (0.6, 0.25, 0.1, 0.05))}
        elif mode == "injection":
            others = [t for t in ("I", "The", "Here", "**") if t not in keys]
            content, dist = "Sure! The answer is B because...", {"Sure": 0.9, **{t: 0.1 / 4 for t in others}}
        elif "JSON" in system and "every class that applies" in system:
            text = _framed_text(user)[0].lower()
            content = json.dumps({"labels": [k for k, n in _classes(system) if n.lower() in text]})
        elif "JSON" in system:
            content = json.dumps({"label": top})
        else:
            content = top
        shown = echo_prompt(messages) + content if mode == "echo" else content  # usage counts only the answer
        if mode == "empty":
            choices = []
        else:
            asked = body.get("top_logprobs")
            top_n = min(max(int(asked), 0), 20) if asked is not None else 5
            logprobs = _logprobs(dist, top_n) if wants_logprobs and mode not in ("no_logprobs", "echo") else None
            choices = [{"index": 0, "message": {"role": "assistant", "content": shown},
                        "logprobs": logprobs, "finish_reason": "stop"}]
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages if isinstance(m, dict))
        completion_tokens = max(len(content.split()), 1)
        self._send(200, {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                         "created": int(time.time()), "model": body.get("model"), "choices": choices,
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens}})


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; print ``ready <base_url>`` once listening."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", default="ok", choices=MODES)
    parser.add_argument("--hang-seconds", type=float, default=5.0)
    parser.add_argument("--retry-after", default="1")
    args = parser.parse_args(argv)
    stopped: list[int] = []  # a plain list: a handler that takes a lock could deadlock the main thread
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopped.append(signum))
    server = FakeOpenAIServer(host=args.host, port=args.port, default_mode=args.mode,
                              hang_seconds=args.hang_seconds, retry_after=args.retry_after).start()
    print(f"ready {server.base_url}", flush=True)
    try:
        while not stopped:
            time.sleep(0.1)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
