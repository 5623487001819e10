"""An optional program writer: ask any OpenAI-compatible chat-completions endpoint for the program.

Works with a local vLLM or Ollama server, or a hosted one: ``url`` is the API
base (``http://127.0.0.1:8000/v1``) or the full ``.../chat/completions``
address, ``model`` the served model's name, and the API key (if any) is read
from the environment variable named by ``api_key_env``, never from a config
file. The model is told the program language (generated from
:data:`graft.vqa.program.OPS`) and a few examples; its reply goes through
exactly the same validation as any program (:func:`~graft.vqa.program.parse_program`).
A reply that is not a valid program, and a failed request, raise
:class:`~graft.vqa.program.ProgramError`; nothing in a reply is executed.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import requests

from graft.vqa.program import Program, ProgramError, language_description, parse_program

_EXAMPLES = [
    ("Is there a road?", {"op": "exists", "of": {"op": "regions", "concept": "road"}}),
    ("Are there more buildings than water areas?",
     {"op": "compare", "cmp": "gt", "left": {"op": "count", "of": {"op": "regions", "concept": "building"}},
      "right": {"op": "count", "of": {"op": "regions", "concept": "water area"}}}),
    ("What is the area covered by small buildings next to a road?",
     {"op": "area", "of": {"op": "relate", "relation": "next_to",
                           "of": {"op": "regions", "concept": "building", "size": "small"},
                           "to": {"op": "regions", "concept": "road"}}}),
    ("Is it a rural or an urban area?", {"op": "choose", "options": {"rural": "rural area", "urban": "urban area"}}),
]


def system_prompt() -> str:
    examples = "\n".join(f"Q: {q}\nA: {json.dumps(p)}" for q, p in _EXAMPLES)
    return ("You translate questions about one satellite image into a program: a single JSON object and "
            "nothing else. The language (one operation per object, arguments as named):\n"
            f"{language_description()}\n"
            "Concepts are plain noun phrases in the singular. Examples:\n" + examples)


@dataclass(frozen=True)
class ChatWriterConfig:
    """Where to ask: ``url`` (API base or full chat-completions URL), ``model``, and the key's env variable."""

    url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_tokens: int = 512


class ChatProgramWriter:
    """Question -> validated :class:`~graft.vqa.program.Program` through a chat-completions endpoint.

    Raises:
        ValueError: at construction, when ``api_key_env`` names an unset environment variable.
    """

    def __init__(self, config: ChatWriterConfig, session: requests.Session | None = None):
        self.config = config
        self.endpoint = config.url.rstrip("/")
        if not self.endpoint.endswith("/chat/completions"):
            self.endpoint += "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ValueError(f"chat writer: environment variable {config.api_key_env} (api_key_env) is not set; "
                                 "export the API key there, or drop api_key_env for a server without keys")
            self.headers["Authorization"] = f"Bearer {key}"
        self.session = session or requests.Session()

    def write(self, question: str) -> Program:
        body = {"model": self.config.model, "temperature": 0, "max_tokens": self.config.max_tokens,
                "messages": [{"role": "system", "content": system_prompt()},
                             {"role": "user", "content": question}]}
        try:
            resp = self.session.post(self.endpoint, json=body, headers=self.headers, timeout=self.config.timeout_s)
            resp.raise_for_status()
            content = resp.json()["choices"][0]["message"]["content"]
        except (requests.RequestException, ValueError, KeyError, IndexError, TypeError) as e:
            raise ProgramError("writer_failed", f"{self.endpoint} gave no program for {question!r}: "
                               f"{type(e).__name__}: {str(e)[:200]}") from None
        if not isinstance(content, str):
            raise ProgramError("writer_failed", f"{self.endpoint}: the reply's message content is not text")
        return parse_program(_strip_fences(content))


def _strip_fences(text: str) -> str:
    """The JSON inside a ```json ... ``` fence, if the model added one (the text itself otherwise)."""
    m = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, flags=re.DOTALL)
    return m.group(1) if m else text.strip()
