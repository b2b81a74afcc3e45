"""prompt_refiner=llm (Section 3.5, Table 1) and per-frame prompts: the template, the answer parsing, the two back
ends (a stub OpenAI-compatible server on 127.0.0.1, a tiny random causal LM built offline), the run record, the
per-frame interpolation and AnimateDiff with per-frame prompts; bad input is one line and exit 2."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import run_stylevid
from diffusers import AnimateDiffPipeline
from hydra import compose, initialize_config_module
from test_animatediff import settings as animatediff_settings, trained_like_adapter

from stylevid.errors import UserInputError
from stylevid.methods import animatediff
from stylevid.models.motion_module import tiny_motion_adapter
from stylevid.models.tiny import tiny_pipeline
from stylevid.progress import StageReporter
from stylevid.prompting import (
    RefinementError, anchor_frames, interpolate_frame_embeddings, parse_frame_prompts, parse_prompt, prompt_refiner,
)
from stylevid.prompting.refine import read_template

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model=tiny", "height=64", "width=64", "frames=2", "steps=3"]
KEY_ENV = "STYLEVID_TEST_LLM_KEY"


# --- a stub OpenAI-compatible chat endpoint ---------------------------------------------------------------------

class StubLLM:
    """Answers POST /v1/chat/completions with `answer(request) -> (status, body)`; records every request."""

    def __init__(self):
        self.requests = []
        self.answer = lambda request: (200, completion("a refined prompt"))
        self.release = threading.Event()  # ends a deliberately slow answer at teardown
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                request = {"path": self.path, "authorization": self.headers.get("Authorization"), "body": body}
                stub.requests.append(request)
                status, reply = stub.answer(request)
                data = json.dumps(reply).encode() if not isinstance(reply, bytes) else reply
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (the timeout test)
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def completion(content, finish_reason="stop"):
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}]}


@pytest.fixture
def llm_server():
    stub = StubLLM()
    yield stub
    stub.close()


def frame_answers(request):
    """A refinement for the Table 1 request, numbered frame prompts for the decomposition request."""
    text = request["body"]["messages"][0]["content"]
    if "numbered lines" in text:
        count = int(text.split("exactly ")[1].split()[0])
        return 200, completion("Here are the moments:\n" + "\n".join(f"{k}. a red fox, moment {k}" for k in range(1, count + 1)))
    return 200, completion('Prompt: "The video shows a red fox trotting through snow, its ears twitching."')


def http_args(stub, *more):
    return ["prompt_refiner=llm", f"llm.api_base={stub.url}", "llm.model=stub-model", *more]


def compose_generate(*overrides):
    method = [] if any(o.startswith("method=") for o in overrides) else ["method=t2v_zero"]
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("generate", overrides=[*method, "model=tiny", "prompt=a man is playing guitar.", *overrides])


def refine_with(*overrides):
    cfg = compose_generate(*overrides)
    with prompt_refiner(cfg, StageReporter()) as refiner:
        return refiner.refine(cfg)


# --- template and parsing -----------------------------------------------------------------------------------------

def test_the_packaged_template_follows_table_1():
    text, source = read_template("template", None)
    assert source == "packaged:table1.txt"
    # Table 1: the prompt first, then the instruction (a change of expression, not too long), then the example
    assert text.startswith("{prompt}\n")
    instruction, example = text.split("Example:")
    assert "facial" in instruction or "expression" in instruction
    assert "too long" in instruction and "The video shows" in example
    frames, _ = read_template("frames_template", None)
    assert "{prompt}" in frames and "{count}" in frames


@pytest.mark.parametrize("answer,prompt", [
    ("The video shows a man.", "The video shows a man."),
    ('  "The video shows a man."  ', "The video shows a man."),
    ("Prompt: The video shows a man.", "The video shows a man."),
    ("**Refined prompt:** \u201cThe video shows a man.\u201d", "The video shows a man."),
    ("Here is the rewritten sentence:\n\nThe video shows a man,\nsmiling.", "The video shows a man, smiling."),
    ("<think>the user wants detail</think>\nThe video shows a man.", "The video shows a man."),
    ("```\nThe video shows a man.\n```", "The video shows a man."),
])
def test_the_answer_is_cleaned_of_what_chat_models_add(answer, prompt):
    assert parse_prompt(answer) == prompt


@pytest.mark.parametrize("answer", ["", "   \n", "<think>only thinking</think>", '""', "Prompt:"])
def test_an_empty_answer_is_refused(answer):
    with pytest.raises(RefinementError, match="empty prompt"):
        parse_prompt(answer)


def test_frame_prompts_are_the_numbered_lines_in_order():
    answer = "Sure! Here they are:\n1. a fox sits\n2) \"a fox stands\"\nFrame 3: a fox runs\nHope this helps."
    assert parse_frame_prompts(answer, 3) == ["a fox sits", "a fox stands", "a fox runs"]
    with pytest.raises(RefinementError, match="wrote 3 numbered frame prompts, 4 were asked for"):
        parse_frame_prompts(answer, 4)
    with pytest.raises(RefinementError, match="numbered its frame prompts 1, 3; expected 1 to 2"):
        parse_frame_prompts("1. a\n3. b", 2)


def test_a_template_of_your_own(tmp_path, llm_server):
    template = tmp_path / "mine.txt"
    template.write_text("Make this cinematic {with braces kept}: {prompt}\n")
    refinement = refine_with(*http_args(llm_server, f"llm.template={template}"))
    assert llm_server.requests[0]["body"]["messages"][0]["content"] == \
        "Make this cinematic {with braces kept}: a man is playing guitar."
    assert refinement.record()["prompt_refiner"]["template"] == str(template)


# --- the OpenAI-compatible back end -------------------------------------------------------------------------------

def test_the_endpoint_gets_the_template_the_prompt_the_model_and_the_key(llm_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    llm_server.answer = lambda request: (200, completion('Prompt: "The video shows a man strumming a guitar."'))
    refinement = refine_with(*http_args(llm_server, f"llm.api_key_env={KEY_ENV}", "llm.max_new_tokens=99"))
    (request,) = llm_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["authorization"] == "Bearer sk-test-123"
    body = request["body"]
    assert body["model"] == "stub-model" and body["temperature"] == 0 and body["max_tokens"] == 99
    (message,) = body["messages"]
    table1, _ = read_template("template", None)
    assert message["role"] == "user" and message["content"] == table1.replace("{prompt}", "a man is playing guitar.").strip()
    assert refinement.refined == "The video shows a man strumming a guitar." and refinement.error is None
    record = refinement.record()
    assert record["prompt_original"] == "a man is playing guitar."
    assert record["prompt_refiner"]["endpoint"] == f"{llm_server.url}/chat/completions"
    assert record["prompt_refiner"]["model"] == "stub-model" and record["prompt_refiner"]["time_s"] >= 0


@pytest.mark.parametrize("answer,message", [
    (lambda r: (500, {"error": {"message": "model crashed\nstack..."}}), "answered HTTP 500: model crashed"),
    (lambda r: (404, {"error": "model 'stub-model' not found"}), "answered HTTP 404: model 'stub-model' not found"),
    (lambda r: (200, completion("")), "answered with an empty message"),
    (lambda r: (200, completion("", finish_reason="length")), "empty message; raise llm.max_new_tokens"),
    (lambda r: (200, {"choices": []}), "answered without a chat completion"),
    (lambda r: (200, b"<html>not json</html>"), "answered without a chat completion"),
    (lambda r: (200, completion("   ")), "answered with an empty message"),
])
def test_endpoint_failures_are_one_line(llm_server, answer, message):
    llm_server.answer = answer
    with pytest.raises(RefinementError, match=message) as raised:
        refine_with(*http_args(llm_server))
    assert "\n" not in str(raised.value) and "llm.on_error=keep" in str(raised.value)


def test_a_slow_endpoint_times_out(llm_server):
    def slow(request):
        llm_server.release.wait(5)
        return 200, completion("too late")

    llm_server.answer = slow
    with pytest.raises(RefinementError, match=r"did not answer within 0.3 s \(llm.timeout_s\)"):
        refine_with(*http_args(llm_server, "llm.timeout_s=0.3"))


def closed_port_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_a_server_that_is_not_there_is_refused_connection():
    with pytest.raises(RefinementError, match=r"refused the connection \(is the server running\?\)"):
        refine_with("prompt_refiner=llm", f"llm.api_base={closed_port_url()}")


@pytest.mark.parametrize("base,url", [
    ("http://localhost:8080/v1", "http://localhost:8080/v1/chat/completions"),
    ("http://localhost:11434/", "http://localhost:11434/v1/chat/completions"),
    ("https://api.example.com/v1/chat/completions", "https://api.example.com/v1/chat/completions"),
])
def test_api_base_is_read_as_the_openai_clients_base_url(base, url):
    from stylevid.prompting.backends import chat_completions_url

    assert chat_completions_url(base) == url


# --- the local transformers back end ------------------------------------------------------------------------------

WORDS = "a the man guitar playing plays smiles video shows standing in park red hat slowly cat".split()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random 2-layer Llama with a word-level tokenizer and a chat template, built and saved offline."""
    from stylevid.models.tiny import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("llm") / "tiny-llama", WORDS)


def greedy_reply(path, text, max_new_tokens):
    """The reference: the chat template applied by hand, greedy decoding, the new tokens decoded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    assert ids[0, 0].item() == tokenizer.convert_tokens_to_ids("<|user|>")  # the template is really applied
    output = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=2)
    return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)


def test_a_local_causal_lm_answers_through_its_chat_template_greedily(tiny_lm):
    template, _ = read_template("template", None)
    expected = greedy_reply(tiny_lm, template.replace("{prompt}", "a man is playing guitar.").strip(), 12)
    assert expected.strip() and set(expected.split()) <= set(WORDS)
    first = refine_with("prompt_refiner=llm", f"llm.path={tiny_lm}", "llm.max_new_tokens=12")
    again = refine_with("prompt_refiner=llm", f"llm.path={tiny_lm}", "llm.max_new_tokens=12")
    assert first.refined == parse_prompt(expected) == again.refined  # deterministic
    assert first.record()["prompt_refiner"] | {"time_s": 0} == {
        "name": "llm", "backend": "transformers", "path": str(tiny_lm), "model": str(tiny_lm), "device": "cpu",
        "template": "packaged:table1.txt", "frames_template": "packaged:frames.txt", "per_frame_prompts": None,
        "time_s": 0, "error": None}


def test_a_local_lm_without_a_chat_template_is_refused(tiny_lm, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_lm, bare)
    (bare / "chat_template.jinja").unlink()
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(RefinementError, match="has no chat template"):
        refine_with("prompt_refiner=llm", f"llm.path={bare}")


def test_a_local_lm_that_is_not_cached_offline_is_one_line():
    with pytest.raises(RefinementError, match=r"llm.path=nobody/no-such-llm is not in the local cache and the hub is offline"):
        refine_with("prompt_refiner=llm", "llm.path=nobody/no-such-llm")


# --- generate: the record, the terminal, batches, bad input ------------------------------------------------------

def test_generate_records_and_shows_the_refined_prompt(llm_server, tmp_path, capsys):
    llm_server.answer = frame_answers
    run_dir = tmp_path / "run"
    code, out, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "prompt=a fox in snow", *http_args(llm_server),
                                   f"output_dir={run_dir}"], capsys)
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    refined = "The video shows a red fox trotting through snow, its ears twitching."
    assert result["prompt"] == result["prompt_refined"] == refined and result["prompt_original"] == "a fox in snow"
    assert result["prompt_refiner"]["backend"] == "openai_chat" and result["prompt_refiner"]["model"] == "stub-model"
    assert "prompt:  a fox in snow" in err and f"refined: {refined}" in err
    assert out.strip() == str(run_dir / "video.mp4")  # stdout stays the run's path for scripts
    # config.yaml keeps the user's prompt: running it again refines again rather than refining the refinement
    assert "prompt: a fox in snow" in (run_dir / "config.yaml").read_text()


def test_each_row_of_a_batch_is_refined(llm_server, tmp_path, capsys):
    llm_server.answer = lambda request: (200, completion(
        "The video shows " + request["body"]["messages"][0]["content"].split("\n")[0]))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "frames=1", f"prompts={prompts}",
                                 *http_args(llm_server), f"output_dir={tmp_path / 'batch'}"], capsys)
    assert code == 0, err
    records = [json.loads((tmp_path / "batch" / row / "result.json").read_text()) for row in ("0000", "0001")]
    assert [(r["prompt_original"], r["prompt"]) for r in records] == [("a cat", "The video shows a cat"),
                                                                     ("a dog", "The video shows a dog")]
    assert len(llm_server.requests) == 2


@pytest.mark.parametrize("answer,reason", [
    (lambda r: (503, {"error": {"message": "loading model"}}), "answered HTTP 503: loading model"),
    (lambda r: (200, completion("")), "answered with an empty message"),
])
def test_on_error_keep_goes_on_with_the_original_prompt_and_records_why(llm_server, tmp_path, capsys, answer, reason):
    llm_server.answer = answer
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "frames=1", "prompt=a fox", *http_args(llm_server),
                                 "llm.on_error=keep", f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["prompt"] == result["prompt_original"] == "a fox" and result["prompt_refined"] is None
    assert reason in result["prompt_refiner"]["error"]
    assert "warning: prompt_refiner=llm:" in err and "going on with the original prompt" in err


def test_on_error_keep_with_a_missing_local_lm(tmp_path, capsys):
    code, _, err = run_stylevid(["generate", "method=t2v_zero", *TINY, "frames=1", "prompt=a fox", "prompt_refiner=llm",
                                 "llm.path=nobody/no-such-llm", "llm.on_error=keep", f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["prompt"] == "a fox" and "not in the local cache" in result["prompt_refiner"]["error"]


def test_failed_refinements_are_one_line_exit_2_and_leave_nothing(llm_server, tiny_lm, tmp_path, capsys):
    def slow(request):
        llm_server.release.wait(5)
        return 200, completion("too late")

    template = tmp_path / "no_placeholder.txt"
    template.write_text("rewrite it\n")
    cases = [
        (http_args(llm_server, "llm.timeout_s=0.2"), slow, "did not answer within 0.2 s"),
        (http_args(llm_server), lambda r: (200, completion("")), "answered with an empty message"),
        (http_args(llm_server), lambda r: (500, {"error": {"message": "boom"}}), "answered HTTP 500: boom"),
        (["prompt_refiner=llm", f"llm.api_base={closed_port_url()}"], None, "refused the connection"),
        (["prompt_refiner=llm", "llm.path=nobody/no-such-llm"], None, "llm.path=nobody/no-such-llm is not in the local cache"),
        (["prompt_refiner=llm"], None, "prompt_refiner=llm needs an LLM: llm.api_base="),
        (["prompt_refiner=llm", f"llm.api_base={llm_server.url}", f"llm.path={tiny_lm}"], None, "not both"),
        (["prompt_refiner=llm", "llm.api_base=localhost:8080"], None, "llm.api_base must be an http:// or https:// URL"),
        (["prompt_refiner=gpt"], None, "prompt_refiner must be llm or null, got 'gpt'"),
        (http_args(llm_server, "llm.on_error=maybe"), None, "llm.on_error must be one of fail, keep"),
        (http_args(llm_server, "llm.timeout_s=0"), None, "llm.timeout_s must be greater than 0"),
        (http_args(llm_server, "llm.max_new_tokens=0"), None, "llm.max_new_tokens must be at least 1"),
        (http_args(llm_server, "llm.template=/no/such.txt"), None, "llm.template /no/such.txt: no such file"),
        (http_args(llm_server, f"llm.template={template}"), None, "has no {prompt} placeholder"),
        (http_args(llm_server, "llm.api_key_env=STYLEVID_NO_SUCH_KEY"), None,
         "the environment variable STYLEVID_NO_SUCH_KEY is not set"),
        ([f"llm.api_base={llm_server.url}"], None, "llm.api_base is set but prompt_refiner is not: add prompt_refiner=llm"),
        (["method=animatediff", "method.per_frame_prompts=2"], None,
         "method.per_frame_prompts=2 asks an LLM to write the prompts: add prompt_refiner=llm"),
        (["method=animatediff", *http_args(llm_server), "method.per_frame_prompts=3"], None,
         "method.per_frame_prompts: 3 prompts for 2 frames"),
        (["method=animatediff", "method.per_frame_prompts=[a,'']"], None, "method.per_frame_prompts must hold non-empty"),
        (["method=animatediff", "method.per_frame_prompts=many"], None, "must be a number of prompts"),
        (["method=t2v_zero", "method.per_frame_prompts=2"], None, "Could not override 'method.per_frame_prompts'"),
    ]
    for args, answer, message in cases:
        llm_server.answer = answer or (lambda r: (200, completion("unused")))
        method = [] if any(a.startswith("method=") for a in args) else ["method=t2v_zero"]
        code, _, err = run_stylevid(["generate", *method, *TINY, "prompt=a fox", *args,
                                     f"outputs_root={tmp_path / 'out'}"], capsys)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert message in err, (args, err)
        assert not (tmp_path / "out").exists(), args
    # the values refused before the LLM is asked never reach it
    assert len(llm_server.requests) == 3


# --- per-frame prompts ---------------------------------------------------------------------------------------------

def test_anchor_frames_put_the_first_and_last_prompt_on_the_first_and_last_frame():
    assert anchor_frames(1, 5) == [0]
    assert anchor_frames(2, 5) == [0, 4]
    assert anchor_frames(3, 9) == [0, 4, 8]
    assert anchor_frames(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        anchor_frames(5, 4)


@pytest.mark.parametrize("count,frames", [(2, 2), (2, 7), (3, 8), (4, 16), (5, 5)])
def test_interpolation_is_exact_at_anchors_and_linear_between(count, frames):
    embeddings = torch.randn(count, 7, 5, generator=torch.Generator().manual_seed(count * frames))
    per_frame = interpolate_frame_embeddings(embeddings, frames)
    anchors = anchor_frames(count, frames)
    assert per_frame.shape == (frames, 7, 5)
    for k, anchor in enumerate(anchors):
        assert torch.equal(per_frame[anchor], embeddings[k])  # prompt k's own embedding, bit for bit
    for k in range(count - 1):
        start, end = anchors[k], anchors[k + 1]
        for frame in range(start, end + 1):
            alpha = (frame - start) / (end - start)
            torch.testing.assert_close(per_frame[frame], (1 - alpha) * embeddings[k] + alpha * embeddings[k + 1])
            # on the segment between the two prompts: equally far from both ends in proportion
            to_start = (per_frame[frame] - embeddings[k]).norm() / (embeddings[k + 1] - embeddings[k]).norm()
            assert to_start.item() == pytest.approx(alpha, abs=1e-5)


def test_one_prompt_is_every_frame_unchanged():
    embeddings = torch.randn(1, 7, 5)
    per_frame = interpolate_frame_embeddings(embeddings, 6)
    assert all(torch.equal(frame, embeddings[0]) for frame in per_frame)


def test_interpolation_equals_diffusers_free_noise_prompt_interpolation():
    """diffusers' FreeNoise interpolates {frame: prompt} embeddings itself; ours gives the same context per frame."""
    pipe = tiny_pipeline(0)
    peer = AnimateDiffPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, tiny_motion_adapter(seed=0), pipe.scheduler)
    peer.enable_free_noise(context_length=16)
    prompts, frames = ["a cat", "a dog running", "a bird"], 8
    anchors = anchor_frames(len(prompts), frames)
    theirs, _ = peer._encode_prompt_free_noise(dict(zip(anchors, prompts)), frames, torch.device("cpu"), 1, False)
    embeddings, _ = peer.encode_prompt(prompts, torch.device("cpu"), 1, False)
    assert torch.equal(interpolate_frame_embeddings(embeddings, frames), theirs)


def test_animatediff_with_one_frame_prompt_is_plain_animatediff_bit_for_bit():
    adapter = trained_like_adapter()
    plain = animatediff.generate(tiny_pipeline(0), adapter, animatediff_settings())
    one = animatediff.generate(tiny_pipeline(0), adapter, animatediff_settings(frame_prompts=["a cat surfing"]))
    assert torch.equal(one.latents, plain.latents)


def test_animatediff_with_two_frame_prompts_changes_the_first_and_last_frames():
    adapter = trained_like_adapter()
    single = animatediff.generate(tiny_pipeline(0), adapter, animatediff_settings(prompt="a cat surfing"))
    two = animatediff.generate(tiny_pipeline(0), adapter,
                               animatediff_settings(frame_prompts=["a cat surfing", "a dog sleeping on a red sofa"]))
    # frames see each other through the motion module, so even the first frame (still "a cat surfing") changes
    assert (two.latents[0] - single.latents[0]).abs().max() > 1e-4
    assert (two.latents[-1] - single.latents[-1]).abs().max() > 1e-4


@pytest.mark.parametrize("free_noise", [False, True])
def test_each_frame_prompt_guides_its_anchor_frame(free_noise):
    """With the identity (zero-initialised) motion module frames do not interact, so the first frame of a
    [cat, dog] video is the first frame of a cat video and its last frame the last frame of a dog video: through
    our swap of the text context, and with FreeNoise through diffusers' own {frame: prompt} interpolation."""
    still = tiny_motion_adapter(seed=0)
    options = dict(free_noise=True, context_length=4, context_stride=2) if free_noise else {}
    cat, dog = "a cat surfing", "a dog sleeping on a red sofa"
    both = animatediff.generate(tiny_pipeline(0), still, animatediff_settings(frame_prompts=[cat, dog], **options))
    only_cat = animatediff.generate(tiny_pipeline(0), still, animatediff_settings(prompt=cat, **options))
    only_dog = animatediff.generate(tiny_pipeline(0), still, animatediff_settings(prompt=dog, **options))
    torch.testing.assert_close(both.latents[0], only_cat.latents[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(both.latents[-1], only_dog.latents[-1], rtol=0, atol=1e-6)
    assert (both.latents[1] - only_cat.latents[1]).abs().max() > 1e-4  # a frame between gets a mix


def test_frame_prompts_reach_the_controlnet_too(tmp_path):
    """With a ControlNet the text context of its call is swapped as the UNet's: with model=tiny's identity motion
    module the first frame of a [cat, dog] video is the cat video's, its last the dog video's."""
    import numpy as np
    from PIL import Image

    from stylevid.generate import run_generate

    maps = tmp_path / "maps"
    maps.mkdir()
    for i in range(3):
        frame = np.zeros((64, 64, 3), np.uint8)
        frame[16:40, 4 + 8 * i : 28 + 8 * i] = 255
        Image.fromarray(frame).save(maps / f"{i:04d}.png")

    def frames(name, *overrides):
        cfg = compose_generate("method=animatediff", *TINY, "frames=3", "save_frames=true", "condition=canny",
                               "controlnet.path=tiny", f"condition.maps={maps}", f"output_dir={tmp_path / name}", *overrides)
        run = run_generate(cfg)
        return np.stack([np.asarray(Image.open(p)) for p in sorted((run / "frames").glob("*.png"))]).astype(int)

    both = frames("both", "method.per_frame_prompts=[a cat surfing,a dog sleeping on a red sofa]")
    cat, dog = frames("cat", "prompt=a cat surfing"), frames("dog", "prompt=a dog sleeping on a red sofa")
    assert np.abs(both[0] - cat[0]).max() <= 1 and np.abs(both[-1] - dog[-1]).max() <= 1
    assert np.abs(cat[-1] - dog[-1]).max() > 1  # the two prompts do make different frames


def test_generate_with_llm_frame_prompts_records_them(llm_server, tmp_path, capsys):
    llm_server.answer = frame_answers
    run_dir = tmp_path / "run"
    code, _, err = run_stylevid(["generate", "method=animatediff", *TINY, "frames=3", "steps=2", "prompt=a fox",
                                 *http_args(llm_server), "method.per_frame_prompts=2", f"output_dir={run_dir}"], capsys)
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["per_frame_prompts"] == ["a red fox, moment 1", "a red fox, moment 2"]
    assert result["prompt_anchor_frames"] == [0, 2] and result["prompt_refiner"]["per_frame_prompts"] == 2
    decomposition = llm_server.requests[1]["body"]["messages"][0]["content"]
    assert decomposition.startswith(result["prompt_refined"]) and "exactly 2 numbered lines" in decomposition
    assert "frame prompt 2/2: a red fox, moment 2" in err
    assert "per_frame_prompts: 2" in (run_dir / "config.yaml").read_text()  # the user's N, for the LLM to write again


def test_a_wrong_frame_prompt_count_keeps_one_prompt_for_every_frame(llm_server):
    llm_server.answer = lambda request: (200, completion("1. only one"))
    refinement = refine_with(*http_args(llm_server, "llm.on_error=keep"), "method=animatediff", "method.per_frame_prompts=2")
    assert refinement.refined == "1. only one" and refinement.frame_prompts is None
    assert "wrote 1 numbered frame prompts, 2 were asked for" in refinement.error
    applied = refinement.apply(compose_generate("method=animatediff", "method.per_frame_prompts=2", "prompt_refiner=llm"))
    assert list(applied.method.per_frame_prompts) == ["1. only one"]


def test_frame_prompts_given_as_a_list_need_no_llm():
    cfg = compose_generate("method=animatediff", "frames=4", "method.per_frame_prompts=[a cat,a dog]")
    settings = animatediff.AnimateDiff().settings(cfg)
    assert settings.frame_prompts == ["a cat", "a dog"]
    with pytest.raises(UserInputError, match="3 prompts for 2 frames"):
        animatediff.AnimateDiff().settings(compose_generate("method=animatediff", "frames=2", "method.per_frame_prompts=[a,b,c]"))
