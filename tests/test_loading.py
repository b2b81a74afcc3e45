import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from stylevid.errors import UserInputError
from stylevid.methods.t2v_zero import ZeroShotSettings, ZeroShotVideo
from stylevid.models.loading import load_pipeline, resolve_device, resolve_dtype
from stylevid.models.tiny import save_tiny_pipeline, tiny_pipeline


def test_tiny_pipeline_is_seeded_and_sd_shaped():
    a, b = tiny_pipeline(seed=0), tiny_pipeline(seed=0)
    for (name, p), (_, q) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert torch.equal(p, q), name
    assert a.vae_scale_factor == 8 and a.unet.config.in_channels == 4
    assert not torch.equal(next(tiny_pipeline(seed=1).unet.parameters()), next(a.unet.parameters()))


def test_saved_tiny_pipeline_loads_from_its_directory_and_generates_the_same(tmp_path, tiny_pipe):
    directory = save_tiny_pipeline(str(tmp_path / "tiny-sd"), seed=0)
    loaded = load_pipeline(OmegaConf.create({"name": "custom", "path": directory}), torch.float32)
    settings = ZeroShotSettings(prompt="a cat", frames=2, height=64, width=64, steps=6, t0=2, t1=4)
    ours = ZeroShotVideo(tiny_pipe)(settings).frames
    theirs = ZeroShotVideo(loaded)(settings).frames
    assert np.array_equal(ours, theirs)
    assert loaded.tokenizer("a red circle").input_ids == tiny_pipe.tokenizer("a red circle").input_ids


def test_loading_errors_name_what_to_pass(tmp_path):
    cfg = lambda **kw: OmegaConf.create({"name": "custom", **kw})  # noqa: E731
    with pytest.raises(UserInputError, match="does not exist"):
        load_pipeline(cfg(path=str(tmp_path / "missing")), torch.float32)
    (tmp_path / "notapipeline").mkdir()
    with pytest.raises(UserInputError, match="model_index.json"):
        load_pipeline(cfg(path=str(tmp_path / "notapipeline")), torch.float32)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(UserInputError, match="allow_pickle"):
        load_pipeline(cfg(path=str(pickle)), torch.float32)
    # a hub id that is not cached, with the hub offline (tests set HF_HUB_OFFLINE=1)
    with pytest.raises(UserInputError, match="model.path="):
        load_pipeline(cfg(name="sd15", path="stable-diffusion-v1-5/stable-diffusion-v1-5"), torch.float32)
    with pytest.raises(UserInputError, match="names no weights"):
        load_pipeline(cfg(path=None), torch.float32)


def test_device_and_dtype_choices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(UserInputError):
        resolve_dtype("float8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="no CUDA"):
            resolve_device("cuda")


def test_weight_files_are_told_apart_by_their_content_not_their_name(tmp_path, tiny_pipe):
    """A text file named .bin is not "a pickle checkpoint"; a safetensors file named .bin must be renamed (diffusers
    picks its reader by the name); a pickle still needs the opt-in. The same for model.path and controlnet.path."""
    from safetensors.torch import save_file

    from stylevid.models.controlnet import load_controlnet
    from stylevid.models.weight_files import weight_file_kind

    (tmp_path / "text.bin").write_text("hello, not weights\n")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "weights.bin"))
    torch.save({"x": torch.zeros(2)}, tmp_path / "weights.ckpt")
    assert [weight_file_kind(tmp_path / name) for name in ("text.bin", "weights.bin", "weights.ckpt")] == [
        None, "safetensors", "pickle"]

    cfg = lambda path, **kw: OmegaConf.create({"name": "custom", "path": str(tmp_path / path), **kw})  # noqa: E731
    with pytest.raises(UserInputError, match=r"model.path=.*text.bin is not a checkpoint file"):
        load_pipeline(cfg("text.bin", allow_pickle=True), torch.float32)
    with pytest.raises(UserInputError, match=r"is a safetensors file named .bin; rename it to .safetensors"):
        load_pipeline(cfg("weights.bin"), torch.float32)
    with pytest.raises(UserInputError, match=r"pickle checkpoint; .* model.allow_pickle=true"):
        load_pipeline(cfg("weights.ckpt"), torch.float32)

    (tmp_path / "text.safetensors").write_text("hello, not weights\n")
    with pytest.raises(UserInputError, match=r"controlnet.path=.*text.safetensors is not a checkpoint file"):
        load_controlnet(str(tmp_path / "text.safetensors"), "canny", tiny_pipe.unet, torch.float32)
    with pytest.raises(UserInputError, match=r"controlnet.allow_pickle=true"):
        load_controlnet(str(tmp_path / "weights.ckpt"), "canny", tiny_pipe.unet, torch.float32)
