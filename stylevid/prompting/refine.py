"""LLM prompt refinement (the VideoBooth-style paper, Section 3.5 and Table 1), for every method.

`prompt_refiner=llm` asks an LLM, once per video before the method's settings are built, to rewrite the prompt
with a template: by default the paper's Table 1 (the prompt, an instruction to rewrite it like an example, adding
a change of facial expression and keeping it short, and the example: a detailed description of a person, their
clothes, setting and mood). With `method.per_frame_prompts=N` the LLM then splits the refined prompt into N
concrete prompts for successive frames (`frames.py`; the Free-Bloom-style decomposition the paper adopts).

The LLM is an OpenAI-compatible chat endpoint (`llm.api_base`) or a local transformers causal LM (`llm.path`),
see `backends.py`. The answer is cleaned of what chat models add around it (a "Prompt:" label, quotes, a
lead-in line, a reasoning model's <think> block). If the LLM fails, `llm.on_error=fail` ends the run on one line
before anything is written; `llm.on_error=keep` goes on with the original prompt and records why.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig

from .. import values
from ..errors import UserInputError
from ..progress import StageReporter
from .backends import LocalChat, OpenAIChat, RefinementError, api_key_from
from .frames import requested_frame_count

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "keep")
PACKAGED_TEMPLATES = {"template": "table1.txt", "frames_template": "frames.txt"}
# What each template must contain (filled by plain replacement, so a template may hold other braces freely).
PLACEHOLDERS = {"template": ("{prompt}",), "frames_template": ("{prompt}", "{count}")}


@dataclass(frozen=True)
class LLMSettings:
    """The `llm` block of generate.yaml, checked: every mistake in it is one line before anything is asked."""

    api_base: str | None
    model: str | None
    api_key: str | None
    timeout_s: float
    path: str | None
    template: str  # the template text, {prompt} in it
    frames_template: str  # the decomposition template, {prompt} and {count} in it
    template_files: dict  # where each came from, for the record
    max_new_tokens: int
    on_error: str

    @classmethod
    def from_config(cls, cfg: DictConfig) -> LLMSettings:
        llm = cfg.llm
        api_base, path = _text(llm.get("api_base")), _text(llm.get("path"))
        if api_base and path:
            raise UserInputError("set llm.api_base= (an endpoint) or llm.path= (a local model), not both")
        if not api_base and not path:
            raise UserInputError("prompt_refiner=llm needs an LLM: llm.api_base=<OpenAI-compatible endpoint, e.g. "
                                 "http://localhost:8080/v1> or llm.path=<local causal LM: hub id or directory>")
        if api_base and not api_base.startswith(("http://", "https://")):
            raise UserInputError(f"llm.api_base must be an http:// or https:// URL, got {api_base!r}")
        on_error = str(llm.get("on_error") or "fail")
        if on_error not in ON_ERROR:
            raise UserInputError(f"llm.on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        templates = {key: read_template(key, _text(llm.get(key))) for key in PACKAGED_TEMPLATES}
        return cls(
            api_base=api_base,
            model=_text(llm.get("model")),
            api_key=api_key_from(_text(llm.get("api_key_env"))) if api_base else None,
            timeout_s=values.number(llm.get("timeout_s", 60.0), "llm.timeout_s", above=0),
            path=path,
            template=templates["template"][0],
            frames_template=templates["frames_template"][0],
            template_files={key: source for key, (_, source) in templates.items()},
            max_new_tokens=values.integer(llm.get("max_new_tokens", 256), "llm.max_new_tokens", 1),
            on_error=on_error,
        )


def _text(value) -> str | None:
    return str(value).strip() or None if value is not None else None


def read_template(key: str, given: str | None) -> tuple[str, str]:
    """(text, where it came from): the file `llm.<key>` names, or the packaged one."""
    if given is None:
        name = PACKAGED_TEMPLATES[key]
        return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8"), f"packaged:{name}"
    file = Path(given).expanduser()
    if not file.is_file():
        raise UserInputError(f"llm.{key} {given}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"llm.{key} {given} cannot be read as UTF-8 text: {error}") from None
    missing = [mark for mark in PLACEHOLDERS[key] if mark not in text]
    if missing:
        raise UserInputError(f"llm.{key} {given} has no {' or '.join(missing)} placeholder: write it where the "
                             f"{'prompt' if missing[0] == '{prompt}' else 'number of prompts'} goes")
    return text, str(file)


def fill(template: str, **fields) -> str:
    for name, value in fields.items():
        template = template.replace("{" + name + "}", str(value))
    return template.strip()


# What chat models put around an answer that is not part of it.
_THINKING = re.compile(r"<think>.*?(?:</think>|$)", re.IGNORECASE | re.DOTALL)  # reasoning models (unclosed: cut off)
_FENCE = re.compile(r"^```\w*\s*$")
_LABEL = re.compile(r"^[*_]*(?:(?:refined|rewritten|new|improved|final|video)\s+)?(?:prompt|sentence|description|caption)"
                    r"[*_]*\s*:[*_]*\s*", re.IGNORECASE)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`", "\u00ab": "\u00bb"}
_NUMBERED = re.compile(r"^[-*\u2022\s]*[*_]*(?:(?:frame|moment|shot|scene|step)\s+)?\(?(\d+)\s*[.):\]]\s*[*_]*\s*(.*)$",
                       re.IGNORECASE)


def _clean(text: str) -> str:
    text = _LABEL.sub("", text.strip(), count=1).strip()
    while len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text


def _answer_lines(answer: str) -> list[str]:
    text = _THINKING.sub("", answer)
    return [line.strip() for line in text.splitlines() if line.strip() and not _FENCE.match(line.strip())]


def parse_prompt(answer: str) -> str:
    """The refined prompt in an LLM's answer, on one line."""
    lines = _answer_lines(answer)
    while len(lines) > 1 and lines[0].endswith(":"):  # a lead-in of its own: "Here is the rewritten sentence:"
        lines.pop(0)
    prompt = _clean(" ".join(lines))
    if not prompt:
        raise RefinementError("the LLM answered with an empty prompt")
    return prompt


def parse_frame_prompts(answer: str, count: int) -> list[str]:
    """The `count` numbered prompts ("1. ...", "2) ...", "Frame 3: ...") in an LLM's answer, in order. Other lines
    (a lead-in, a closing remark) are left out; a wrong count or numbering is refused, not cut or padded: either
    would put the wrong moment on a frame."""
    items = [(int(match[1]), _clean(match[2])) for match in map(_NUMBERED.match, _answer_lines(answer)) if match]
    if len(items) != count:
        raise RefinementError(f"the LLM wrote {len(items)} numbered frame prompts, {count} were asked for")
    numbers = [number for number, _ in items]
    if numbers != list(range(1, count + 1)):
        raise RefinementError(f"the LLM numbered its frame prompts {', '.join(map(str, numbers))}; expected 1 to {count}")
    if not all(prompt for _, prompt in items):
        raise RefinementError("the LLM wrote an empty frame prompt")
    return [prompt for _, prompt in items]


@dataclass
class Refinement:
    """What the LLM made of one video's prompt."""

    original: str
    refined: str | None  # None when the original was kept (llm.on_error=keep)
    frame_prompts: list[str] | None  # the N prompts of method.per_frame_prompts=N, None when not asked or failed
    frame_count: int | None  # N, when asked
    backend: dict  # back end, model, endpoint or path
    templates: dict
    time_s: float
    error: str | None = None  # why the original prompt (or the one refined prompt on every frame) was kept

    @property
    def prompt(self) -> str:
        """The prompt the video is made from."""
        return self.refined or self.original

    def apply(self, cfg: DictConfig) -> DictConfig:
        """A copy of the video's config with the refined prompt and, when asked for, the per-frame prompts in place
        (one prompt for every frame when they could not be written and llm.on_error=keep)."""
        applied = cfg.copy()
        applied.prompt = self.prompt
        if self.frame_count:
            applied.method.per_frame_prompts = self.frame_prompts or [self.prompt]
        return applied

    def record(self) -> dict:
        """result.json's fields (the per-frame prompts are the method's setting, recorded by the method)."""
        return {
            "prompt_original": self.original,
            "prompt_refined": self.refined,
            "prompt_refiner": {
                "name": "llm", **self.backend, **self.templates, "per_frame_prompts": self.frame_count,
                "time_s": round(self.time_s, 3), "error": self.error,
            },
        }

    def lines(self) -> list[str]:
        """For the terminal: what the video will be made from."""
        lines = [f"prompt:  {self.original}"]
        if self.refined:
            lines.append(f"refined: {self.refined}")
        for number, prompt in enumerate(self.frame_prompts or [], start=1):
            lines.append(f"  frame prompt {number}/{len(self.frame_prompts)}: {prompt}")
        return lines


class PromptRefiner:
    """One LLM back end for a whole run: every video of a batch is refined by it (a local model loads once)."""

    def __init__(self, settings: LLMSettings, backend, reporter: StageReporter):
        self.settings = settings
        self.backend = backend
        self.reporter = reporter

    def refine(self, cfg: DictConfig) -> Refinement:
        original, count = str(cfg.prompt), requested_frame_count(cfg)
        refined = frame_prompts = error = None
        started = time.perf_counter()
        with self.reporter.stage("refining prompt"):
            try:
                refined = parse_prompt(self.backend.ask(fill(self.settings.template, prompt=original)))
                if count:  # the refined prompt is the concrete one the paper decomposes
                    answer = self.backend.ask(fill(self.settings.frames_template, prompt=refined, count=count))
                    frame_prompts = parse_frame_prompts(answer, count)
            except RefinementError as failure:
                if self.settings.on_error == "fail":
                    raise RefinementError(f"prompt_refiner=llm: {failure}; llm.on_error=keep goes on with the "
                                          "original prompt instead") from None
                error = str(failure)
                kept = "the refined prompt on every frame" if refined else "the original prompt"
                log.warning("prompt_refiner=llm: %s; going on with %s (llm.on_error=keep)", error, kept)
        return Refinement(original=original, refined=refined, frame_prompts=frame_prompts, frame_count=count,
                          backend=self.backend.record(), templates=self.settings.template_files,
                          time_s=time.perf_counter() - started, error=error)


@contextmanager
def prompt_refiner(cfg: DictConfig, reporter: StageReporter, in_sweep: bool = False) -> Iterator[PromptRefiner | None]:
    """The run's refiner with `prompt_refiner=llm` (its local model released on exit), else None.

    An `llm.api_base`/`llm.path` without `prompt_refiner=llm` would be ignored without a word: refused, except in a
    sweep, where `-m prompt_refiner=null,llm` compares the two and the block cannot be unset per job."""
    choice = cfg.get("prompt_refiner")
    if choice is None:
        chosen = [key for key in ("api_base", "path") if cfg.llm.get(key)]
        if chosen:
            message = f"llm.{chosen[0]} is set but prompt_refiner is not"
            if not in_sweep:
                raise UserInputError(f"{message}: add prompt_refiner=llm, or remove llm.{chosen[0]}")
            log.warning("%s; no refinement in this sweep job", message)
        yield None
        return
    if choice != "llm":
        raise UserInputError(f"prompt_refiner must be llm or null, got {choice!r}")
    settings = LLMSettings.from_config(cfg)
    if settings.api_base:
        backend = OpenAIChat(settings.api_base, settings.model, settings.api_key, settings.timeout_s, settings.max_new_tokens)
    else:
        backend = LocalChat(settings.path, settings.max_new_tokens, *_local_placement(cfg))
    try:
        yield PromptRefiner(settings, backend, reporter)
    finally:
        backend.close()


def _local_placement(cfg: DictConfig):
    """The run's device and dtype for a local LM: under torchrun each rank on its own GPU, like the video model."""
    from ..distributed import Rank, rank_device
    from ..models.loading import resolve_device, resolve_dtype

    rank = Rank(world_size=int(os.environ.get("WORLD_SIZE", "1")), local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    device = rank_device(resolve_device(str(cfg.device)), rank)
    return device, resolve_dtype(str(cfg.dtype), device)
