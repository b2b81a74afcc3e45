"""method=image_prompt (VideoBooth-style paper, Sections 3.1-3.4): the exemplar attention against the paper's
equations by hand, the subject-row hook, the equivalence with plain AnimateDiff, the unconditional branch, bad input."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import run_stylevid

from stylevid.errors import UserInputError
from stylevid.methods import animatediff
from stylevid.methods import image_prompt as method
from stylevid.models import image_prompt as ip
from stylevid.models.gen1 import tiny_image_encoder
from stylevid.models.motion_module import inflate, tiny_motion_adapter
from stylevid.models.tiny import tiny_pipeline
from stylevid.progress import StageReporter

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["model=tiny", "frames=3", "steps=2", "height=64", "width=64"]


@pytest.fixture(scope="module")
def star_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("ip") / "star.png"
    image = np.full((48, 40, 3), 230, np.uint8)
    cv2.circle(image, (20, 24), 12, (200, 60, 150), -1)
    cv2.imwrite(str(path), image)
    return path


def attention_by_hand(q, k, v):
    """softmax(q kᵀ / √d) v, written out."""
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


def test_exemplar_attention_is_the_papers_equations():
    torch.manual_seed(0)
    frames, heads, tokens, d = 4, 2, 6, 8
    q, k, v = (torch.randn(frames, heads, tokens, d) for _ in range(3))
    k_i, v_i = torch.randn(heads, 5, d), torch.randn(heads, 5, d)
    out = ip.exemplar_attention(q, k, v, k_i, v_i)
    # V_0^new = softmax(Q_0 [K_I, K_0]ᵀ/√d) [V_I, V_0]
    v0_new = attention_by_hand(q[0], torch.cat([k_i, k[0]], -2), torch.cat([v_i, v[0]], -2))
    expected = [v0_new]
    for i in range(1, frames):  # V_i^new = softmax(Q_i [K_0, K_{i-1}]ᵀ/√d) [V_0^new, V_{i-1}]
        expected.append(attention_by_hand(q[i], torch.cat([k[0], k[i - 1]], -2), torch.cat([v0_new, v[i - 1]], -2)))
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-5, rtol=1e-5)
    # without the image prompt (the unconditional branch) frame 0 attends to itself alone
    plain = ip.exemplar_attention(q, k, v)
    v0 = attention_by_hand(q[0], k[0], v[0])
    torch.testing.assert_close(plain[0], v0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain[2], attention_by_hand(q[2], torch.cat([k[0], k[1]], -2), torch.cat([v0, v[1]], -2)),
                               atol=1e-5, rtol=1e-5)


def test_position_encodings_are_sincos_scaled_to_the_top_grid():
    top = ip.spatial_position_encoding(8, 4, 4, (4, 4))
    half = ip.spatial_position_encoding(8, 2, 2, (4, 4))
    # a token of the half-size map at (y, x) sits where the top map's token (2y, 2x) sits
    torch.testing.assert_close(half.view(2, 2, 8)[1, 1], top.view(4, 4, 8)[2, 2])
    # PE_{pos,2i} = sin(pos / 10000^(2i/d)): diffusers lays the sines in the first half of each axis's channels
    temporal = ip.temporal_position_encoding(4, 3)
    assert torch.allclose(temporal[2], torch.tensor([math.sin(2), math.sin(2 / 100), math.cos(2), math.cos(2 / 100)]))


def tiny_parts(num_tokens=1):
    pipe = tiny_pipeline(0)
    unet = inflate(pipe.unet, tiny_motion_adapter(0))
    torch.manual_seed(0)
    mapper = ip.ImagePromptMapper(vision_dim=32, text_dim=32, clip_layers=[1, 2], num_tokens=num_tokens, hidden_dim=16)
    return pipe, unet, mapper


def test_subject_hook_replaces_exactly_the_subject_rows():
    pipe = tiny_pipeline(0)
    composed = ip.compose_prompt(pipe.tokenizer, "a red star moving right", "star", num_tokens=4)  # 4 byte tokens
    assert composed.positions == [5, 6, 7, 8]  # after <bos> a</w> r e d</w>
    assert torch.equal(composed.input_ids, pipe.tokenizer("a red star moving right", padding="max_length",
                                                          max_length=77, return_tensors="pt").input_ids[0])
    tokens = torch.randn(1, 4, 32)
    seen = {}
    embedding = pipe.text_encoder.get_input_embeddings()
    with torch.no_grad(), ip.subject_rows_replaced(pipe.text_encoder, [composed.positions], tokens):
        # registered after the replacing hook, so it sees what the text encoder goes on with
        hook = embedding.register_forward_hook(lambda module, args, output: seen.setdefault("rows", output))
        pipe.text_encoder(composed.input_ids[None])
    hook.remove()
    own = embedding(composed.input_ids[None])
    rows = seen["rows"][0]
    assert torch.equal(rows[5:9], tokens[0])
    others = [r for r in range(77) if r not in composed.positions]
    assert torch.equal(rows[others], own[0, others])  # bit-identical elsewhere
    # a mapper of another length rewrites the span to its number of slots; the rest of the prompt shifts with it
    one = ip.compose_prompt(pipe.tokenizer, "a red star moving right", "star", num_tokens=1)
    assert one.positions == [5] and torch.equal(one.input_ids[6:20], composed.input_ids[9:23])


def test_a_subject_not_in_the_prompt_names_the_prompts_words():
    pipe = tiny_pipeline(0)
    with pytest.raises(UserInputError, match="subject='dog' is not a word of the prompt; its words are: a, star, moving, right"):
        ip.compose_prompt(pipe.tokenizer, "a star moving right", "dog", 1)


def identity_mapper(mapper, text_encoder, tokenizer, word):
    """The mapper's output layer set to return the word's own token embeddings (weights zero, bias = embedding)."""
    ids = tokenizer(word, add_special_tokens=False, return_tensors="pt").input_ids[0]
    with torch.no_grad():
        own = text_encoder.get_input_embeddings()(ids)
        mapper.output_layer.weight.zero_()
        mapper.output_layer.bias.copy_(own.flatten())
    return mapper


def test_coarse_only_with_the_words_own_embedding_is_plain_animatediff_bit_for_bit(star_image):
    settings = method.ImagePromptSettings(prompt="a star moving right", negative_prompt="blurry", frames=3, height=64,
                                          width=64, steps=2, guidance_scale=7.5, seed=3, image_prompt=str(star_image),
                                          subject="star", fine=False)
    plain_pipe = animatediff.animatediff_pipeline(tiny_pipeline(0), tiny_motion_adapter(0))
    plain = animatediff.sample(plain_pipe, settings, StageReporter())
    pipe = tiny_pipeline(0)
    video_pipe = animatediff.animatediff_pipeline(pipe, tiny_motion_adapter(0))
    torch.manual_seed(0)
    mapper = ip.ImagePromptMapper(vision_dim=32, text_dim=32, clip_layers=[1, 2], num_tokens=4, hidden_dim=16)
    identity_mapper(mapper, pipe.text_encoder, pipe.tokenizer, "star")
    encoder, processor = tiny_image_encoder(0)
    loaded = method.ImagePromptModels(video_pipe, ip.ImagePromptAdapter(mapper, video_pipe.unet, fine=False), encoder, processor)
    out = method.ImagePrompt().generate(loaded, settings, StageReporter())
    assert settings.token_positions == [2, 3, 4, 5]
    assert torch.equal(out.latents, plain.latents)
    # a mapper whose tokens differ changes the video: the composed text really reaches the UNet
    with torch.no_grad():
        mapper.output_layer.bias.add_(0.5)
    assert not torch.equal(method.ImagePrompt().generate(loaded, settings, StageReporter()).latents, plain.latents)


def test_zero_gates_are_the_coarse_model_and_open_gates_change_it():
    """A fresh fine adapter (gates at zero) computes what the coarse-only adapter computes, exemplar or not; opening
    the injection gate changes the conditioned video, and the position gate changes what the injection gives (the
    encodings live in the injected attention only)."""
    pipe, unet, mapper = tiny_parts()
    fine, coarse = ip.ImagePromptAdapter(mapper, unet, fine=True), ip.ImagePromptAdapter(mapper, unet, fine=False)
    state = ip.ImagePromptState(position_encoding=True)
    torch.manual_seed(1)
    video, context, exemplar = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 77, 32), torch.randn(1, 4, 8, 8)

    def run(adapter):
        with ip.installed(unet, adapter, state), torch.no_grad():
            state.conditioned, state.latent_size = torch.tensor([True]), (8, 8)
            if adapter.fine:
                ip.run_exemplar_pass(unet, state, exemplar, torch.tensor([400]), context)
            return unet(video, 400, encoder_hidden_states=context.repeat(3, 1, 1)).sample  # one row per frame

    plain = run(coarse)
    torch.testing.assert_close(run(fine), plain, atol=1e-5, rtol=1e-5)
    outputs = {}
    for injection, position in ((1.0, 0.0), (1.0, 1.0), (0.0, 1.0)):
        with torch.no_grad():
            for gates in fine.gates():
                gates.injection.fill_(injection), gates.position.fill_(position)
        outputs[injection, position] = run(fine)
    assert not torch.allclose(outputs[1.0, 0.0], plain, atol=1e-3)
    assert not torch.allclose(outputs[1.0, 1.0], outputs[1.0, 0.0], atol=1e-3)
    torch.testing.assert_close(outputs[0.0, 1.0], plain, atol=1e-5, rtol=1e-5)


def test_unconditional_branch_has_no_exemplar_and_the_conditional_one_uses_it():
    pipe, unet, mapper = tiny_parts()
    adapter = ip.ImagePromptAdapter(mapper, unet, fine=True)
    with torch.no_grad():  # exemplar projections that matter: any change of K_I, V_I shows in conditioned rows
        for parameter in adapter.exemplar.parameters():
            parameter.add_(torch.randn_like(parameter))
    state = ip.ImagePromptState(position_encoding=True)
    torch.manual_seed(1)
    video, context = torch.randn(1, 4, 3, 8, 8), torch.randn(3, 77, 32)
    exemplar = torch.randn(1, 4, 8, 8)

    def run(conditioned, exemplar_latent):
        batch = torch.cat([video] * len(conditioned))
        with ip.installed(unet, adapter, state), torch.no_grad():
            state.conditioned, state.latent_size = torch.tensor(conditioned), (8, 8)
            if any(conditioned):
                ip.run_exemplar_pass(unet, state, exemplar_latent, torch.tensor([400]), context[:1])
            return unet(batch, 400, encoder_hidden_states=context.repeat(len(conditioned), 1, 1)).sample

    both = run([False, True], exemplar)
    other_exemplar = run([False, True], exemplar + 1)
    alone = run([False], None)
    assert torch.allclose(both[0], alone[0], atol=1e-5)  # the unconditional row does not see the exemplar
    assert torch.allclose(other_exemplar[0], alone[0], atol=1e-5)
    assert not torch.allclose(both[1], other_exemplar[1], atol=1e-3)  # the conditional row does


def test_a_video_whose_coarse_tokens_are_dropped_reads_the_layers_own_kv_and_still_the_exemplar():
    """target.coarse_dropout's sample (`ImagePromptState.composed` False, `conditioned` True): its text
    cross-attention is the layer's own (K, V copies back at the originals give the same video), and the exemplar
    still reaches it; with `composed` True the trained copies are read."""
    pipe, unet, mapper = tiny_parts()
    adapter = ip.ImagePromptAdapter(mapper, unet, fine=True)
    originals = {k: v.clone() for k, v in adapter.kv.state_dict().items()}
    torch.manual_seed(2)
    with torch.no_grad():
        for parameter in [*adapter.kv.parameters(), *adapter.exemplar.parameters()]:
            parameter.add_(0.5 * torch.randn_like(parameter))
        for gates in adapter.gates():
            gates.injection.fill_(1.0)
    state = ip.ImagePromptState(position_encoding=True)
    video, context, exemplar = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 77, 32), torch.randn(1, 4, 8, 8)

    def run(composed, exemplar_latent):
        with ip.installed(unet, adapter, state), torch.no_grad():
            state.conditioned, state.latent_size = torch.tensor([True]), (8, 8)
            ip.run_exemplar_pass(unet, state, exemplar_latent, torch.tensor([400]), context, torch.tensor([composed]))
            state.composed = torch.tensor([composed])
            try:
                return unet(video, 400, encoder_hidden_states=context.repeat(3, 1, 1)).sample
            finally:
                state.composed = None

    dropped, composed = run(False, exemplar), run(True, exemplar)
    assert not torch.allclose(dropped, composed, atol=1e-3)  # the trained copies matter where composed
    assert not torch.allclose(dropped, run(False, exemplar + 1), atol=1e-3)  # the exemplar reaches a dropped video
    trained = {k: v.clone() for k, v in adapter.kv.state_dict().items()}
    adapter.kv.load_state_dict(originals)
    torch.testing.assert_close(run(True, exemplar), dropped, atol=1e-5, rtol=1e-5)  # dropped = the layer's own K, V
    adapter.kv.load_state_dict(trained)


def test_generate_writes_the_record_and_fine_and_position_encoding_change_the_video(star_image, tmp_path, capsys):
    runs = {}
    for name, extra in (("full", []), ("no_pe", ["method.position_encoding=false"]), ("coarse", ["method.fine=false"])):
        code, out, err = run_stylevid(["generate", "method=image_prompt", *TINY, f"image_prompt={star_image}", "subject=star",
                                       "prompt=a star moving right", f"output_dir={tmp_path / name}", *extra], capsys)
        assert code == 0, err
        runs[name] = json.loads((tmp_path / name / "result.json").read_text())
    full = runs["full"]
    assert full["image_prompt"] == str(star_image) and full["subject"] == "star"
    assert full["subject_token_positions"] == [2] and full["fine"] is True and full["position_encoding"] is True
    assert runs["no_pe"]["position_encoding"] is False and runs["coarse"]["fine"] is False
    frames = {name: cv2.VideoCapture(str(tmp_path / name / "video.mp4")).read()[1] for name in runs}
    assert not np.array_equal(frames["full"], frames["no_pe"]) and not np.array_equal(frames["full"], frames["coarse"])

    # stylevid evaluate reads the run's image prompt for image_fidelity: the CLIP image cosine of its frames to it
    code, out, err = run_stylevid(["evaluate", f"run={tmp_path / 'full'}", "metrics.clip.model=tiny",
                                   "metrics=[image_fidelity,clipsim]"], capsys)
    assert code == 0, err
    evaluation = json.loads((tmp_path / "full" / "evaluation" / "metrics.json").read_text())
    from stylevid.evaluate import tiny_clip_dir
    from stylevid.io.video_input import iter_frames
    from stylevid.metrics.clip import load_clip, style_fidelity

    video = np.stack(list(iter_frames(tmp_path / "full" / "video.mp4")))
    subject = method.read_image_prompt(method.ImagePromptSettings(prompt="", image_prompt=str(star_image)))
    expected = style_fidelity(load_clip(str(tiny_clip_dir())), video, subject)
    assert evaluation["aggregate"]["image_fidelity"]["mean"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["image_prompt=BROKEN", "subject=star", "prompt=a star moving right"], "image_prompt BROKEN cannot be read as an image"),
    (["image_prompt=STAR", "subject=dog", "prompt=a star moving right"],
     "subject='dog' is not a word of the prompt; its words are: a, star, moving, right"),
    (["image_prompt=STAR", "prompt=a star moving right"], "needs subject="),
    (["subject=star", "prompt=a star moving right"], "needs image_prompt="),
    (["image_prompt=STAR", "subject=star", "prompt=a star", "model=toy", "method.weights=/no/such/ip_weights"],
     "method.weights=/no/such/ip_weights is not a directory"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, star_image, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    args = [a.replace("BROKEN", str(broken)).replace("STAR", str(star_image)) for a in args]
    code, out, err = run_stylevid(["generate", "method=image_prompt", *TINY, *args, f"output_dir={tmp_path / 'run'}"], capsys)
    assert code == 2
    message = message.replace("BROKEN", str(broken))
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


# --- training (stylevid train image_prompt) ------------------------------------------------------------------------------

TRAIN = ["target=image_prompt", "model=tiny", "data=toy", "data.frames=3", "data.stride=8", "data.size=32", "data.count=8",
         "device=cpu", "target.image_encoder=tiny", "target.mapper_width=16", "motion.num_attention_heads=2",
         "trainer.batch_size=2", "trainer.grad_accum=1", "trainer.lr=1.0e-2", "trainer.log_every=1",
         "trainer.mixed_precision=no", "trainer.gradient_checkpointing=false", "trainer.tensorboard=false",
         "diffusion.caption_dropout=0.3"]


def train_cfg(overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("train", overrides=[*TRAIN, *overrides])


def weights_of(run):
    from safetensors.torch import load_file

    mapper = ip.load_mapper(run).state_dict()
    return {**{f"mapper.{k}": v for k, v in mapper.items()}, **load_file(str(run / ip.PROCESSORS_FILE))}


def test_each_stage_trains_only_its_parameters_and_resumes_exactly(tmp_path):
    from stylevid.train import run_train

    coarse = run_train(train_cfg(["target.stage=coarse", "trainer.max_steps=2", f"output_dir={tmp_path / 'coarse'}"]))
    manifest = ip.read_manifest(coarse)
    assert manifest["stages"] == ["coarse"] and manifest["fine"] is False and (coarse / "image_encoder").is_dir()
    initial = ip.ImagePromptAdapter(ip.load_mapper(coarse), inflate(tiny_pipeline(0).unet, tiny_motion_adapter(0)), fine=True)
    trained = weights_of(coarse)
    fresh_kv = {k: v for k, v in initial.projection_state_dict().items() if k.startswith("kv.")}
    assert any(not torch.equal(trained[k], v) for k, v in fresh_kv.items())  # the K, V copies trained
    assert not any(k.startswith("exemplar.") for k in trained)  # no injection in the coarse stage

    common = ["target.stage=fine", f"target.init={coarse}", "trainer.max_steps=4", "trainer.checkpoint_every=2"]
    fine = run_train(train_cfg(common + [f"output_dir={tmp_path / 'fine'}"]))
    tuned = weights_of(fine)
    assert ip.read_manifest(fine)["stages"] == ["coarse", "fine"]
    for key, value in trained.items():  # the mapper and the K, V copies stay the coarse stage's
        assert torch.equal(tuned[key], value), key
    fresh = {k: v for k, v in initial.projection_state_dict().items() if k.startswith("exemplar.")}
    assert fresh and all(k in tuned for k in fresh)
    assert any(not torch.equal(tuned[k], v) for k, v in fresh.items())  # the exemplar projections trained

    losses = [json.loads(line)["loss"] for line in (fine / "metrics.jsonl").read_text().splitlines()]
    resumed = run_train(train_cfg(common + [f"output_dir={tmp_path / 'resumed'}",
                                            f"trainer.resume={fine / 'checkpoints' / 'step_0000002'}"]))
    again = [json.loads(line)["loss"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert again == losses[2:]
    assert all(torch.equal(v, tuned[k]) for k, v in weights_of(resumed).items())

    # the exported run is a weights directory method=image_prompt reads; the coarse one refuses method.fine=true
    from stylevid.generate import run_generate
    from hydra import compose, initialize_config_module

    def generate_cfg(weights, *extra):
        with initialize_config_module("stylevid.conf", version_base="1.3"):
            return compose("generate", overrides=["method=image_prompt", "model=tiny", "frames=3", "steps=2", "height=32",
                                                  "width=32", f"image_prompt={STAR_PNG}", "subject=star",
                                                  "prompt=a star moving right", f"method.weights={weights}", *extra])

    cv2.imwrite(str(tmp_path / "star.png"), np.full((16, 16, 3), 200, np.uint8))
    STAR_PNG = tmp_path / "star.png"
    run = Path(run_generate(generate_cfg(fine, f"output_dir={tmp_path / 'video'}")))
    record = json.loads((run / "result.json").read_text())
    assert record["weights"]["stages"] == ["coarse", "fine"] and record["weights"]["path"] == str(fine)
    with pytest.raises(UserInputError, match="has no fine stage"):
        run_generate(generate_cfg(coarse, f"output_dir={tmp_path / 'refused'}"))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path):
    """trainer.gradient_checkpointing=true checkpoints the frozen video UNet (main pass in train mode, the exemplar
    pass whole): the joint stage's loss and every trained parameter's gradient are those of the plain step, and the
    UNet's segments really are checkpointed (recomputed in backward)."""
    from stylevid.training.targets import Step
    from stylevid.training.targets.image_prompt import ImagePromptTarget

    cfg = train_cfg(["target.stage=joint", "diffusion.caption_dropout=0.5", f"output_dir={tmp_path}"])
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        target = ImagePromptTarget(cfg, torch.device("cpu"), torch.float32, 0)
        if checkpointing:
            target.enable_gradient_checkpointing()
        batch = target.collate([target.dataset()[i] for i in range(2)])
        calls = []  # forwards of a layer inside the first spatial transformer (a checkpointed segment when on)
        transformer = target.unet.down_blocks[0].attentions[0]
        hook = transformer.proj_in.register_forward_hook(lambda *args: calls.append(1))
        target.model.train()
        loss = target.loss(target.model, batch, Step(0, 0, 0, 1, torch.Generator().manual_seed(3)))
        forward_calls = len(calls)
        loss.backward()
        hook.remove()
        grads = [p.grad.clone() if p.grad is not None else None for p in target.trainable_parameters()]
        results.append((float(loss), grads, forward_calls, len(calls)))
    (plain_loss, plain_grads, plain_forward, plain_calls), (loss, grads, forward_calls, calls) = results
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert any(g is not None and g.abs().sum() > 0 for g in plain_grads)
    for plain, checked in zip(plain_grads, grads):
        assert (plain is None) == (checked is None)
        if plain is not None:
            assert torch.allclose(plain, checked, atol=1e-6, rtol=1e-5)
    assert plain_calls == plain_forward == forward_calls  # the exemplar pass and the main pass
    assert calls == forward_calls + 1  # checkpointed: the main pass's segment is recomputed once in backward


def test_a_fine_step_whose_samples_all_drop_the_image_prompt_still_trains(tmp_path):
    """caption dropout 1: no sample reads the exemplar projections (trained in the fine stage beside the gates); the
    step still runs backward, with zero gradients for them (a rare batch in a real run, which used to stop it)."""
    from stylevid.train import run_train
    from stylevid.training.targets import Step
    from stylevid.training.targets.image_prompt import ImagePromptTarget

    coarse = run_train(train_cfg(["target.stage=coarse", "trainer.max_steps=1", f"output_dir={tmp_path / 'coarse'}"]))
    cfg = train_cfg(["target.stage=fine", f"target.init={coarse}", "diffusion.caption_dropout=1.0",
                     f"output_dir={tmp_path / 'fine'}"])
    target = ImagePromptTarget(cfg, torch.device("cpu"), torch.float32, 0)
    batch = target.collate([target.dataset()[i] for i in range(2)])
    loss = target.loss(target.model, batch, Step(0, 0, 0, 1, torch.Generator().manual_seed(0)))
    loss.backward()
    projections = [p for entry in target.adapter.exemplar.values() for m in (entry.to_k, entry.to_v) for p in m.parameters()]
    assert projections and all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in projections)
    assert all(p.grad is not None for p in target.trainable_parameters())
    run_train(train_cfg(["target.stage=fine", f"target.init={coarse}", "diffusion.caption_dropout=1.0",
                         "trainer.max_steps=2", f"output_dir={tmp_path / 'fine_run'}"]))
    assert (tmp_path / "fine_run" / ip.PROCESSORS_FILE).is_file()


def test_coarse_dropout_keeps_the_exemplar_and_drops_the_coarse_tokens_of_its_share(tmp_path):
    """target.coarse_dropout=0.5 (fine stage): about half the kept samples are trained without their coarse tokens,
    every kept one with its exemplar; the mapper then reads only the composed ones' features."""
    from stylevid.train import run_train
    from stylevid.training.targets import Step
    from stylevid.training.targets.image_prompt import ImagePromptTarget

    coarse = run_train(train_cfg(["target.stage=coarse", "trainer.max_steps=1", f"output_dir={tmp_path / 'coarse'}"]))
    cfg = train_cfg(["target.stage=fine", f"target.init={coarse}", "diffusion.caption_dropout=0.0",
                     "target.coarse_dropout=0.5", f"output_dir={tmp_path / 'fine'}"])
    target = ImagePromptTarget(cfg, torch.device("cpu"), torch.float32, 0)
    batch = target.collate([target.dataset()[i] for i in range(2)])
    seen = []
    original = target.predict
    target.trainable._predict = lambda *args: seen.append((args[4].clone(), args[7].clone(), len(args[5]))) or original(*args)
    with torch.no_grad():
        for step in range(12):
            target.loss(target.model, batch, Step(step, 0, 0, 1, torch.Generator().manual_seed(step)))
    kept = torch.cat([k for k, _, _ in seen])
    composed = torch.cat([c for _, c, _ in seen])
    assert bool(kept.all()) and 0.25 <= float((~composed).float().mean()) <= 0.75  # 24 draws of 0.5
    assert all(n == int(c.sum()) for _, c, n in seen)  # the mapper's features: the composed samples only


def test_fine_without_init_and_a_bad_stage_are_one_line_exit_2(tmp_path, capsys):
    for args, message in ((["target.stage=fine"], "target.stage=fine trains the injection on a trained coarse stage"),
                          (["target.stage=late"], "target.stage must be one of coarse, fine, joint"),
                          (["target.coarse_dropout=0.5"], "target.coarse_dropout is for target.stage=fine"),
                          (["target.stage=fine", "target.coarse_dropout=1.0"], "target.coarse_dropout must be a number in")):
        code, out, err = run_stylevid(["train", "image_prompt", *TRAIN[1:], *args, f"output_dir={tmp_path / 'run'}"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "run").exists()


# --- the dataset builder (Section 4.1) -------------------------------------------------------------------------------


def test_dataset_builder_filters_by_keyword_writes_crops_and_counts_the_skips(tmp_path, capsys):
    import importlib.util

    from stylevid.data import toy_world

    spec = importlib.util.spec_from_file_location("build_ipd", "scripts/build_image_prompt_dataset.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    videos = tmp_path / "videos"
    paths = toy_world.write_videos(videos, 3, seed=0, frames=6, shape="star", colour="red")
    (videos / "broken.mp4").write_bytes(b"not a video")
    captions = ["a red star moving right", "a red star on a gray background", "a circle", "a red star"]
    ids = [p.stem for p in paths[:2]] + [paths[2].stem, "broken"]
    (tmp_path / "webvid.csv").write_text("videoid,name,page_dir\n" + "".join(f"{i},{c},\n" for i, c in zip(ids, captions)))
    asked = []

    def fake(image, keyword):  # the detector is pluggable: sees the keyword, finds nothing in the second clip
        asked.append(keyword)
        return None if len(asked) == 2 else builder.toy_detector(image, keyword)

    from stylevid.data.videos import webvid_records

    records = webvid_records(tmp_path / "webvid.csv", videos)
    summary = builder.build_dataset(records, ["dog", "star"], fake, tmp_path / "out")
    assert asked == ["star", "star"]
    assert summary["kept"] == 1 and summary["skipped"] == {"no keyword": 1, "unreadable video": 1, "not detected": 1}
    rows = list(csv_rows(tmp_path / "out" / "dataset.csv"))
    assert [(r["subject"], r["caption"]) for r in rows] == [("star", "a red star moving right")]
    crop = cv2.imread(str(tmp_path / "out" / rows[0]["crop"]))[..., ::-1]
    x0, y0, x1, y1 = map(int, rows[0]["box"].split())
    assert crop.shape[:2] == (y1 - y0, x1 - x0) and (crop.max(-1).astype(int) - crop.min(-1)).max() >= 140  # the red star
    # a missing local detector: one line, exit 2, nothing written
    code = builder.main(["--csv", str(tmp_path / "webvid.csv"), "--videos", str(videos), "--keywords", "star",
                         "--detector", str(tmp_path / "no_owlv2"), "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err
    assert code == 2 and "is not a local directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2-*"))


def csv_rows(path):
    import csv

    with open(path, newline="") as file:
        yield from csv.DictReader(file)
