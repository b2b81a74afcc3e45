"""`stylevid train lora`: the LoRA learns, only LoRA weights change, exact resume, diffusers' LoRA format that loads
in diffusers and in `stylevid generate lora.path=`, prior preservation's loss, bad input."""

import json

import numpy as np
import pytest
import torch
from conftest import run_stylevid
from hydra import compose, initialize_config_module
from PIL import Image

from stylevid.errors import UserInputError
from stylevid.train import run_train

CAPTION = "a photo of sks dog"


def write_images(folder, count, seed=0, size=(40, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        image = np.zeros((*size, 3), dtype=np.uint8)
        image[..., index % 3] = 200  # a strong colour per image: something for the LoRA to learn
        image += rng.integers(0, 40, image.shape, dtype=np.uint8)
        Image.fromarray(image).save(folder / f"img_{index}.png")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("dog"), 2)


def train_cfg(overrides):
    with initialize_config_module("stylevid.conf", version_base="1.3"):
        return compose("train", overrides=["target=lora", "experiment=tiny_lora", *overrides])


def lora_trainer(cfg, run_dir=None):
    from stylevid.distributed import Rank
    from stylevid.training.loop import Trainer
    from stylevid.training.targets import get_target

    return Trainer(cfg, get_target("lora"), run_dir, Rank(), torch.device("cpu"))


def fixed_loss(trainer, batch):
    from stylevid.training.loop import step_generator
    from stylevid.training.targets import Step

    with torch.no_grad():
        return float(trainer.target.loss(trainer.model, batch, Step(0, 0, 0, 1, step_generator(123, 0, 0, 0))))


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lora_learns_and_only_lora_weights_change(images):
    cfg = train_cfg([f"data.folder={images}", f"data.caption={CAPTION}", "trainer.max_steps=8", "trainer.lr=1e-2",
                      "lora.rank=8", "lora.alpha=16"])
    trainer = lora_trainer(cfg)
    unet = trainer.target.unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    batch = trainer.target.collate([trainer.dataset[i] for i in range(len(trainer.dataset))])
    first = fixed_loss(trainer, batch)
    trainer.train()
    last = fixed_loss(trainer, batch)
    logged = trainer.losses
    print(f"fixed-batch loss {first:.4f} -> {last:.4f}; logged {logged}")
    assert last < 0.95 * first  # measured: 0.885 -> 0.786
    after = unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_A" in k for k in changed) and any("lora_B" in k for k in changed)
    assert all(torch.equal(before[k], after[k]) for k in before if "lora_" not in k)  # the base UNet bit-identical
    assert {k for k, p in unet.named_parameters() if p.requires_grad} == {k for k in before if "lora_" in k}
    assert all(p.dtype == torch.float32 for p in trainer.trainable)


@pytest.fixture(scope="module")
def full_run(images, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_runs")
    common = [f"data.folder={images}", f"data.caption={CAPTION}", "trainer.max_steps=4", "trainer.checkpoint_every=2",
              "trainer.keep_checkpoints=3", "lora.alpha=8", "lora.train_text_encoder=true"]
    return common, run_train(train_cfg(common + [f"output_dir={root / 'full'}"])), root


def test_resume_repeats_the_losses_and_weights(full_run):
    from safetensors.torch import load_file

    common, full, root = full_run
    full_losses = losses(full)
    assert len(full_losses) == 4 and all(np.isfinite(full_losses))
    state = torch.load(full / "checkpoints" / "step_0000002" / "training_state.pt", weights_only=True)
    assert state["record"]["lora"]["rank"] == 4 and state["record"]["lora"]["alpha"] == 8.0
    assert state["record"]["base_model"]["name"] == "tiny"
    resumed = run_train(train_cfg(common + [f"output_dir={root / 'resumed'}",
                                            f"trainer.resume={full / 'checkpoints' / 'step_0000002'}"]))
    print(f"full {full_losses}; resumed {losses(resumed)}")
    np.testing.assert_allclose(losses(resumed), full_losses[2:], rtol=1e-6)
    a = load_file(full / "pytorch_lora_weights.safetensors")
    b = load_file(resumed / "pytorch_lora_weights.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # another rank is refused in one line
    with pytest.raises(UserInputError, match="lora.rank"):
        run_train(train_cfg(common + ["lora.rank=2", f"output_dir={root / 'other'}",
                                      f"trainer.resume={full / 'checkpoints' / 'step_0000002'}"]))


def sample(pipe, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return pipe("a photo of sks dog", num_inference_steps=2, guidance_scale=3.0, height=32, width=32,
                generator=generator, output_type="np").images[0]


def test_export_loads_in_diffusers_and_in_stylevid_generate(images, tmp_path, capsys):
    from stylevid.models.tiny import tiny_pipeline

    cfg = train_cfg([f"data.folder={images}", f"data.caption={CAPTION}", "trainer.max_steps=2", "lora.alpha=8", "trainer.lr=1e-2",
                     "lora.train_text_encoder=true", f"output_dir={tmp_path / 'run'}"])
    (tmp_path / "run").mkdir()
    trainer = lora_trainer(cfg, tmp_path / "run")
    trainer.train()
    files = trainer.export()
    file = tmp_path / "run" / files["lora"]
    assert file.name == "pytorch_lora_weights.safetensors"
    trainer.model.eval()
    own = sample(trainer.target.pipe)  # the trainer's own peft-wrapped UNet and text encoder

    plain_pipe = tiny_pipeline(0)
    plain_pipe.set_progress_bar_config(disable=True)
    without = sample(plain_pipe)
    plain_pipe.load_lora_weights(str(tmp_path / "run"))
    with_lora = sample(plain_pipe)
    print(f"diffusers vs trainer max |d| {np.abs(with_lora - own).max():.2e}; lora vs none {np.abs(with_lora - without).max():.3f}")
    assert np.abs(with_lora - without).max() > 1e-3
    assert np.abs(with_lora - own).max() <= 1e-4

    # stylevid's own fusion (what generate's lora.path= does) gives diffusers' fused weights: the alpha / rank
    # scale is folded into the file, which every reader applies alike
    from stylevid.models.lora import fuse_lora

    fused = tiny_pipeline(0)
    fuse_lora({"unet": fused.unet, "text_encoder": fused.text_encoder}, file, 1.0)
    plain_pipe.fuse_lora()
    for name in ("unet", "text_encoder"):
        ours, theirs = getattr(fused, name).state_dict(), getattr(plain_pipe, name).state_dict()
        theirs = {k.replace(".base_layer", ""): v for k, v in theirs.items() if "lora_" not in k}
        assert all(torch.allclose(v, theirs[k], atol=1e-6) for k, v in ours.items())

    # stylevid generate lora.path=: the fused LoRA changes the video
    frames = {}
    for name, extra in (("none", []), ("lora", [f"lora.path={file}"])):
        out = tmp_path / f"gen_{name}"
        code, _, err = run_stylevid(["generate", "method=animatediff", "model=tiny", f"prompt={CAPTION}", "frames=2",
                                     "steps=2", "height=32", "width=32", "save_frames=true", f"output_dir={out}", *extra], capsys)
        assert code == 0, err
        frames[name] = np.stack([np.asarray(Image.open(p)) for p in sorted((out / "frames").glob("*.png"))]).astype(int)
    assert np.abs(frames["lora"] - frames["none"]).max() > 0


def test_prior_preservation_loss_is_instance_plus_weighted_class_mse(images, tmp_path):
    import torch.nn.functional as F

    from stylevid.training.loop import step_generator
    from stylevid.training.targets import Step

    class_folder = tmp_path / "class"
    write_images(class_folder, 1, seed=5)  # one there, one generated by the base model (num_class_images=2)
    cfg = train_cfg([f"data.folder={images}", f"data.caption={CAPTION}", "lora.prior_preservation=true",
                     f"data.class_folder={class_folder}", "data.class_caption=a photo of a dog",
                     "lora.prior_loss_weight=0.5", "trainer.max_steps=1"])
    trainer = lora_trainer(cfg)
    target = trainer.target
    assert len(list(class_folder.glob("*.png"))) == 2 and len(target.class_records) == 2
    batch = target.collate([trainer.dataset[i] for i in range(2)])
    assert batch["pixel_values"].shape[0] == 4 and batch["captions"] == [CAPTION] * 2 + ["a photo of a dog"] * 2
    with torch.no_grad():
        # the loop's B-LoRA starts at zero: move it, so the prediction is not the base model's alone
        for p in trainer.trainable:
            p.add_(0.01)
        loss = float(target.loss(trainer.model, batch, Step(0, 0, 0, 1, step_generator(7, 0, 0, 0))))
        # by hand, with the loss's own draws in its order: posterior sample, noise, timesteps, caption dropout
        generator = step_generator(7, 0, 0, 0)
        posterior = target.vae.encode(batch["pixel_values"]).latent_dist
        latents = posterior.sample(generator=generator) * target.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (4,), generator=generator)
        torch.rand(4, generator=generator)
        noisy = target.objective.scheduler.add_noise(latents, noise, timesteps)
        text = target.text_encoder(target.tokenize(batch["captions"]))[0]
        prediction = target.unet(noisy, timesteps, encoder_hidden_states=text).sample
        expected = F.mse_loss(prediction[:2], noise[:2]) + 0.5 * F.mse_loss(prediction[2:], noise[2:])
    assert loss == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("override,match", [("lora.rank=0", "lora.rank"), ("empty", "data.folder"),
                                            ("data=folder", "data=images")])
def test_bad_input_is_one_line_before_any_run_directory(override, match, tmp_path, images):
    folder = images
    extra = [override]
    if override == "empty":
        folder = tmp_path / "empty"
        folder.mkdir()
        (folder / "notes.txt").write_text("no images here")
        extra = []
    out = tmp_path / "never"
    overrides = [f"data.folder={folder}", f"data.caption={CAPTION}", f"output_dir={out}", *extra]
    if override == "data=folder":
        overrides = ["data=folder", "data.video_folder=x", f"output_dir={out}"]
    with pytest.raises(UserInputError, match=match) as error:
        run_train(train_cfg(overrides))
    assert len(str(error.value).splitlines()) == 1
    assert not out.exists()


def test_missing_caption_names_the_key(tmp_path):
    folder = write_images(tmp_path / "imgs", 1)
    with pytest.raises(UserInputError, match="data.caption"):
        run_train(train_cfg([f"data.folder={folder}", f"output_dir={tmp_path / 'never'}"]))
    (folder / "img_0.txt").write_text("a sidecar caption\n")
    from stylevid.data.images import image_records

    assert [r.caption for r in image_records(folder, None)] == ["a sidecar caption"]
    assert [r.caption for r in image_records(folder, "x")] == ["a sidecar caption"]
