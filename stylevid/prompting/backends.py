"""The two ways stylevid talks to an LLM: an OpenAI-compatible chat endpoint, or a local transformers causal LM.

Both answer one user message with one reply, deterministically (temperature 0 / greedy decoding), and turn every
way the LLM can fail (refused connection, timeout, HTTP error, a model that is not there offline, an empty
reply) into a one-line `RefinementError`, which `llm.on_error` turns into an error or a kept prompt.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException

import torch

from ..errors import UserInputError


class RefinementError(UserInputError):
    """The LLM could not refine a prompt (one line, naming the endpoint or model and what went wrong)."""


class OpenAIChat:
    """POST {api_base}/chat/completions as llama.cpp's server, Ollama, vLLM and OpenAI itself serve it.

    `api_base` is the OpenAI client's base URL (`http://localhost:8080/v1`); one without a path gets `/v1`
    (`http://localhost:11434`), and a full `.../chat/completions` URL is used as it is.
    """

    def __init__(self, api_base: str, model: str | None, api_key: str | None, timeout_s: float, max_tokens: int):
        self.url = chat_completions_url(api_base)
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        # A local server (the usual case) is reached directly: an http_proxy set for the outside world would
        # otherwise carry 127.0.0.1 to the proxy, which cannot reach it.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(self.url) else []
        self._opener = urllib.request.build_opener(*handlers)

    def record(self) -> dict:
        return {"backend": "openai_chat", "endpoint": self.url, "model": self.model}

    def ask(self, text: str) -> str:
        body = {"messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": self.max_tokens,
                "stream": False}
        if self.model:  # llama.cpp serves one model and needs no name; Ollama, vLLM and OpenAI do
            body["model"] = self.model
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            raise RefinementError(f"LLM endpoint {self.url} answered HTTP {error.code}: {_server_message(error)}") from None
        except urllib.error.URLError as error:
            raise RefinementError(f"LLM endpoint {self.url} {self._unreachable(error.reason)}") from None
        except (OSError, HTTPException) as error:  # a timeout or a dropped connection while the answer is read
            raise RefinementError(f"LLM endpoint {self.url} {self._unreachable(error)}") from None
        return _reply_text(payload, self.url)

    def _unreachable(self, reason) -> str:
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"did not answer within {self.timeout_s:g} s (llm.timeout_s)"
        if isinstance(reason, ConnectionRefusedError):
            return "refused the connection (is the server running?)"
        return f"cannot be reached: {reason}"

    def close(self) -> None:
        pass


def chat_completions_url(api_base: str) -> str:
    base = api_base.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    if not urllib.parse.urlsplit(base).path:
        base += "/v1"
    return base + "/chat/completions"


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _server_message(error: urllib.error.HTTPError) -> str:
    """What the server said went wrong: OpenAI's and llama.cpp's {"error": {"message": ...}}, Ollama's
    {"error": "..."}, or the first line of the body; else the HTTP reason."""
    try:
        body = error.read().decode("utf-8", "replace")
    except OSError:
        body = ""
    message = body
    try:
        detail = json.loads(body).get("error")
        message = detail.get("message", "") if isinstance(detail, dict) else str(detail or "")
    except (ValueError, AttributeError):
        pass
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return (lines[0] if lines else str(error.reason))[:200]


def _reply_text(payload: bytes, url: str) -> str:
    try:
        reply = json.loads(payload)
        choice = reply["choices"][0]
        content = choice["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise RefinementError(f"LLM endpoint {url} answered without a chat completion (no choices[0].message)") from None
    if not content.strip():
        hint = "; raise llm.max_new_tokens" if choice.get("finish_reason") == "length" else ""
        raise RefinementError(f"LLM endpoint {url} answered with an empty message{hint}")
    return content


class LocalChat:
    """A transformers causal LM (`llm.path`: hub id or directory) answering through its tokenizer's chat template,
    with greedy decoding. Loaded on first use, once for all the prompts of a run, and released by `close` before
    the video model loads. Offline (HF_HUB_OFFLINE=1) a hub id must be in the local cache."""

    def __init__(self, path: str, max_new_tokens: int, device: torch.device, dtype: torch.dtype):
        self.path = path
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.dtype = dtype
        self._tokenizer = None
        self._model = None
        self._failure: RefinementError | None = None  # a model that failed to load is not tried again per prompt

    def record(self) -> dict:
        return {"backend": "transformers", "path": self.path, "model": self.path, "device": str(self.device)}

    def _load(self) -> None:
        if self._failure is not None:
            raise self._failure
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..models.components import load_component

        try:
            tokenizer = load_component(self.path, key="llm.path", pretrained=AutoTokenizer.from_pretrained,
                                       required_file="tokenizer_config.json", what="a transformers tokenizer")
            if not tokenizer.chat_template:
                raise UserInputError(f"llm.path={self.path} has no chat template (tokenizer.chat_template); "
                                     "use an instruction-tuned model that ships one")
            model = load_component(self.path, key="llm.path", pretrained=AutoModelForCausalLM.from_pretrained,
                                   what="a transformers causal LM", dtype=self.dtype)
        except UserInputError as error:
            self._failure = RefinementError(str(error))
            raise self._failure from None
        self._tokenizer, self._model = tokenizer, model.to(self.device).eval()

    def ask(self, text: str) -> str:
        if self._model is None:
            self._load()
        tokenizer = self._tokenizer
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True).to(self.device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with torch.no_grad():
            output = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        if not reply.strip():
            raise RefinementError(f"llm.path={self.path} answered with an empty message")
        return reply

    def close(self) -> None:
        """Free the LM's memory (on a GPU it would sit beside the video model for the whole run)."""
        loaded = self._model is not None
        self._tokenizer = self._model = None
        if loaded:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def api_key_from(env_name: str | None) -> str | None:
    """The key in the environment variable `llm.api_key_env` names (a key never goes into a config file)."""
    if not env_name:
        return None
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise UserInputError(f"llm.api_key_env={env_name}, but the environment variable {env_name} is not set")
    return key
