"""The chat-completions program writer against a local fake server: valid replies run, everything else is
refused with a reason, and nothing in a reply is ever executed."""

from __future__ import annotations

import builtins
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from graft.vqa.chat_writer import ChatProgramWriter, ChatWriterConfig
from graft.vqa.primitives import PrimitiveSettings, Scene
from graft.vqa.program import ProgramError, run_program

VALID = {"op": "count", "of": {"op": "regions", "concept": "building"}}
REPLIES = {
    "valid": "```json\n" + json.dumps(VALID) + "\n```",
    "invalid": '{"op": "count", "of": {"op": "regions"}}',
    "code": "__import__('os').system('touch pwned')",
    "unknown_op": json.dumps({"op": "python", "source": "import os; os.system('touch pwned')"}),
    "nesting": '{"op": "not", "of": ' * 150 + "null" + "}" * 150,
    "prose": "Sure! Here is the program: count the buildings.",
}


class _Handler(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        question = body["messages"][-1]["content"]
        if question == "error":
            self.send_response(500)
            self.end_headers()
            return
        reply = {"choices": [{"message": {"role": "assistant", "content": REPLIES[question]}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _scene() -> Scene:
    feats = torch.zeros(2, 2, 2)
    feats[0, :, 0] = 1.0  # top row: building, bottom row: background
    feats[1, :, 1] = 1.0
    return Scene(rgb=np.zeros((16, 16, 3), np.uint8), patch_feats=feats,
                 encode_concepts=lambda names: torch.eye(2)[[0 if n == "building" else 1 for n in names]],
                 gsd_m=1.0, settings=PrimitiveSettings(background=("field",)))


def test_a_valid_reply_runs_and_the_key_comes_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("GRAFT_TEST_CHAT_KEY", "sk-test-123")
    writer = ChatProgramWriter(ChatWriterConfig(url=server, model="fake-llm", api_key_env="GRAFT_TEST_CHAT_KEY"))
    program = writer.write("valid")
    assert program.tree == VALID
    assert run_program(program, _scene()) == 1
    last = _Handler.seen[-1]
    assert last["path"] == "/v1/chat/completions"
    assert last["auth"] == "Bearer sk-test-123"
    assert last["body"]["model"] == "fake-llm"
    assert '"op": "compare"' in last["body"]["messages"][0]["content"]  # the language is in the system prompt


@pytest.mark.parametrize(("question", "reason"), [
    ("invalid", "missing_argument"),
    ("code", "not_json"),
    ("unknown_op", "unknown_op"),
    ("nesting", "too_deep"),
    ("prose", "not_json"),
    ("error", "writer_failed"),
])
def test_bad_replies_are_refused_with_a_reason_and_nothing_runs(server, question, reason, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def forbidden(*a, **k):
        raise AssertionError("a chat reply reached exec/eval/compile")

    for name in ("exec", "eval"):
        monkeypatch.setattr(builtins, name, forbidden)
    writer = ChatProgramWriter(ChatWriterConfig(url=server + "/chat/completions", model="fake-llm"))
    with pytest.raises(ProgramError) as e:
        writer.write(question)
    assert e.value.reason == reason, str(e.value)
    assert not (tmp_path / "pwned").exists()


def test_a_missing_key_variable_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("GRAFT_TEST_MISSING_KEY", raising=False)
    with pytest.raises(ValueError, match="GRAFT_TEST_MISSING_KEY"):
        ChatProgramWriter(ChatWriterConfig(url="http://127.0.0.1:9/v1", model="m", api_key_env="GRAFT_TEST_MISSING_KEY"))
