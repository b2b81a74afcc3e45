"""stylevid's gradient checkpointing of the inflated UNet: same loss and motion gradients, really recomputed, eval untouched."""

import copy

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from stylevid.models.checkpointing import checkpointed, disable_gradient_checkpointing, enable_gradient_checkpointing
from stylevid.models.motion_module import inflate, motion_adapter_for_unet, motion_parameters
from stylevid.models.tiny import TINY_TEXT_DIM, tiny_unet

FRAMES = 4


def randomized_motion(model, seed=1):
    """Non-zero motion weights (zero-init proj_out would make the motion path the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in motion_parameters(model):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def base():
    unet = tiny_unet(0)
    model = inflate(unet, motion_adapter_for_unet(unet, num_attention_heads=2, seed=0))
    model.freeze_unet2d_params()
    return randomized_motion(model)


@pytest.fixture()
def model(base):
    return copy.deepcopy(base).train()


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, FRAMES, 8, 8, generator=generator)
    text = torch.randn(FRAMES, 5, TINY_TEXT_DIM, generator=generator)
    return sample, torch.tensor([500]), text


def step(model, inputs):
    sample, timestep, text = inputs
    model.zero_grad(set_to_none=True)
    prediction = model(sample, timestep, encoder_hidden_states=text).sample
    loss = torch.nn.functional.mse_loss(prediction, torch.zeros_like(prediction))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in motion_parameters(model)}


def count_calls(model, kind):
    """Forward calls of every `kind` submodule, by name; hooks are returned for removal."""
    calls = {}

    def hook(module, args, output):
        calls[module._test_name] = calls.get(module._test_name, 0) + 1

    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, kind):
            module._test_name = name
            hooks.append(module.register_forward_hook(hook))
    return calls, hooks


def test_loss_and_motion_gradients_equal_the_plain_run(model, inputs):
    plain_loss, plain_grads = step(model, inputs)
    assert all(g.abs().sum() > 0 for g in plain_grads.values())  # every motion module gets a gradient
    image_weights = [p for name, p in model.named_parameters() if ".motion_modules." not in f".{name}"]
    assert image_weights and not any(p.requires_grad for p in image_weights)

    enable_gradient_checkpointing(model)
    loss, grads = step(model, inputs)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-7)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(p.grad is None for p in image_weights)


def test_motion_modules_spatial_transformers_and_resnets_are_recomputed_in_backward(model, inputs):
    enable_gradient_checkpointing(model)
    sample, timestep, text = inputs
    motion, motion_hooks = count_calls(model, BasicTransformerBlock)
    prediction = model(sample, timestep, encoder_hidden_states=text).sample
    forward_calls = dict(motion)
    assert forward_calls and set(forward_calls.values()) == {1}
    motion.clear()
    prediction.square().mean().backward()
    for hook in motion_hooks:
        hook.remove()
    recomputed = set(motion)
    # Temporal transformer blocks of every level (down, mid, up) and spatial transformer blocks run again in backward.
    temporal = {n for n in forward_calls if ".motion_modules." in n}
    spatial = {n for n in forward_calls if ".attentions." in n}
    assert temporal and spatial
    assert temporal <= recomputed
    # All but the first spatial transformer: nothing before the first motion module needs a backward.
    assert spatial - recomputed == {"down_blocks.0.attentions.0.transformer_blocks.0"}
    assert all(motion[n] == 1 for n in recomputed)  # once each: nothing checkpointed twice

    # Resnets (diffusers' flags, through our function) are recomputed too: their norms run again.
    wrapped = checkpointed(model)
    assert any(".motion_modules." in n for n in wrapped) and any(".attentions." in n for n in wrapped)
    assert all(block.gradient_checkpointing for block in [*model.down_blocks, model.mid_block, *model.up_blocks])
    assert not any(m.gradient_checkpointing for m in model.modules() if isinstance(m, Transformer2DModel))
    norms, norm_hooks = count_calls(model, torch.nn.GroupNorm)
    model(sample, timestep, encoder_hidden_states=text).sample.square().mean().backward()
    for hook in norm_hooks:
        hook.remove()
    assert norms["up_blocks.1.resnets.0.norm1"] == 2 and norms["mid_block.resnets.0.norm1"] == 2
    assert norms["conv_norm_out"] == 1  # not checkpointed: runs once


def test_eval_mode_and_no_grad_run_the_plain_forward_once(model, inputs):
    sample, timestep, text = inputs
    model.eval()
    with torch.no_grad():
        plain = model(sample, timestep, encoder_hidden_states=text).sample
    enable_gradient_checkpointing(model)
    calls, hooks = count_calls(model, (BasicTransformerBlock, torch.nn.GroupNorm))
    with torch.no_grad():
        no_grad = model(sample, timestep, encoder_hidden_states=text).sample
    torch.testing.assert_close(no_grad, plain, rtol=0, atol=0)
    calls.clear()
    # eval mode with grad on (e.g. guidance by a gradient): no checkpoint, no recompute in backward
    sample = sample.clone().requires_grad_(True)
    out = model(sample, timestep, encoder_hidden_states=text).sample
    forward = dict(calls)
    out.square().mean().backward()
    assert calls == forward and set(calls.values()) == {1}
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(out.detach(), plain, rtol=0, atol=0)


def test_idempotent_removable_and_deepcopy_safe(model, inputs):
    first = enable_gradient_checkpointing(model)
    assert enable_gradient_checkpointing(model) == first
    names = checkpointed(model)
    assert sorted(names) == sorted(first)
    assert any(isinstance(m, AnimateDiffTransformer3D) for n, m in model.named_modules() if n in names)
    assert not any(n.startswith("mid_block.motion_modules") for n in names)  # diffusers' flag covers those

    twin = copy.deepcopy(model)  # e.g. an EMA copy: its wrapped forwards run its own weights
    with torch.no_grad():
        for _, parameter in motion_parameters(twin):
            parameter.zero_()
    loss, _ = step(model, inputs)
    twin_loss, _ = step(twin, inputs)
    assert not torch.equal(loss, twin_loss)

    disable_gradient_checkpointing(model)
    assert checkpointed(model) == [] and not model.is_gradient_checkpointing
    assert all("forward" not in vars(m) for m in model.modules())
    calls, hooks = count_calls(model, BasicTransformerBlock)
    again, _ = step(model, inputs)
    for hook in hooks:
        hook.remove()
    assert set(calls.values()) == {1}
    torch.testing.assert_close(again, loss)


@pytest.mark.slow
def test_benchmark_small_preset_saves_at_least_forty_percent():
    from scripts.benchmark_train import measure

    rows = measure(["--preset", "small", "--frames", "16", "--size", "256", "--batch", "1"], ("off", "stylevid"))
    off, ours = (row["peak_step_mib"] for row in rows)
    assert 1 - ours / off >= 0.40, rows
