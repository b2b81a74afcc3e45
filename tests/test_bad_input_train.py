"""Bad input to `stylevid train` (and the motion files of `generate method=animatediff`): one line, exit code 2, no run.

Every key a user types for `train` has a row: the real CLI runs in this process and must end with a single line
on stderr that names the key, exit code 2, and no run directory. Weight files that are pickles (without the
opt-in), not checkpoints at all, or hostile pickles are refused the same way, and no code from them runs.
"""

import json
import pickle

import pytest
import torch
from conftest import run_stylevid

from stylevid.data.toy import write_toy_videos
from stylevid.models.motion_module import tiny_motion_adapter, to_original_animatediff

TINY_TRAIN = [
    "model=tiny", "data=folder", "data.frames=4", "data.stride=2", "data.size=32", "data.num_workers=0",
    "trainer.batch_size=2", "trainer.grad_accum=1", "trainer.lr=1e-3", "trainer.log_every=1", "trainer.max_steps=2",
    "trainer.mixed_precision=no", "trainer.gradient_checkpointing=false", "trainer.tensorboard=false",
    "motion.num_attention_heads=2", "device=cpu",
]
TINY_ANIMATEDIFF = ["generate", "method=animatediff", "model=tiny", "prompt=x", "frames=4", "steps=1", "height=64",
                    "width=64", "device=cpu"]


class Hostile:
    """Unpickling this runs code (it writes `marker`): what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    write_toy_videos(folder, count=4, frames=10, size=32)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory, videos):
    """The weight files and checkpoints the rows below refer to, by name."""
    root = tmp_path_factory.mktemp("files")
    marker = root / "marker"
    # the hostile payload really runs code when unpickled unsafely, so the rows below can fail
    pickle.loads(pickle.dumps(Hostile(marker)))
    assert marker.read_text() == "code ran"
    marker.unlink()

    weights = to_original_animatediff(tiny_motion_adapter(seed=0).state_dict())
    torch.save(weights, root / "weights.ckpt")  # a real (harmless) motion module, as a pickle
    (root / "text.safetensors").write_text("this is not a checkpoint\n")
    torch.save({"state_dict": Hostile(marker)}, root / "hostile.ckpt")  # torch.save's zip format
    (root / "hostile.safetensors").write_bytes(pickle.dumps(Hostile(marker)))  # a plain pickle, misnamed
    (root / "hostile.bin").write_bytes(pickle.dumps(Hostile(marker)))

    # a real checkpoint at step 2, and copies of it with a hostile and a text training state
    from hydra import compose, initialize_config_module

    from stylevid.train import run_train

    with initialize_config_module("stylevid.conf", version_base="1.3"):
        cfg = compose("train", overrides=["target=motion_module", *TINY_TRAIN, f"data.video_folder={videos}", "trainer.checkpoint_every=2",
                                          f"output_dir={root / 'trained'}"])
    run_train(cfg)
    checkpoint = root / "trained" / "checkpoints" / "step_0000002"
    for name, write in (("hostile_state", lambda p: torch.save({"global_step": 1, "optimizer": Hostile(marker)}, p)),
                        ("text_state", lambda p: p.write_text("global_step: 1\n"))):
        (root / name / "motion_module").mkdir(parents=True)
        write(root / name / "training_state.pt")
    return {"root": root, "marker": marker, "checkpoint": checkpoint, "trained": root / "trained"}


def assert_refused(args, key, tmp_path, capsys, phrase=""):
    run_dir, outputs = tmp_path / "run", tmp_path / "outputs"
    code, _, err = run_stylevid([*args, f"output_dir={run_dir}", f"outputs_root={outputs}"], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert key in lines[0] and phrase in lines[0], err
    assert not run_dir.exists() and not outputs.exists()


# One row per key a user types for `train` (conf/train.yaml, conf/trainer/default.yaml, conf/data/*.yaml), with a
# value outside its rule: (overrides, the key the message must name).
TRAIN_ROWS = [
    ("seed=-1", "seed"),
    ("seed=abc", "seed"),
    ("seed=99999999999999999999", "seed"),
    ("diffusion.schedule=D", "diffusion.schedule"),
    ("diffusion.caption_dropout=1.5", "diffusion.caption_dropout"),
    ("diffusion.caption_dropout=nan", "diffusion.caption_dropout"),
    ("device=gpu9", "device"),
    ("model.seed=-3", "model.seed"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.batch_size=abc", "trainer.batch_size"),
    ("trainer.batch_size=1.5", "trainer.batch_size"),
    ("trainer.grad_accum=0", "trainer.grad_accum"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.lr=-1", "trainer.lr"),
    ("trainer.lr=0", "trainer.lr"),
    ("trainer.lr=nan", "trainer.lr"),
    ("trainer.lr=inf", "trainer.lr"),
    ("trainer.lr_scheduler=cosine_annealing", "trainer.lr_scheduler"),
    ("trainer.lr_scheduler=piecewise_constant", "trainer.lr_scheduler"),
    ("trainer.warmup_steps=-1", "trainer.warmup_steps"),
    ("trainer.weight_decay=-0.1", "trainer.weight_decay"),
    ("trainer.weight_decay=nan", "trainer.weight_decay"),
    ("trainer.adam_beta1=1", "trainer.adam_beta1"),
    ("trainer.adam_beta2=-0.5", "trainer.adam_beta2"),
    ("trainer.adam_epsilon=0", "trainer.adam_epsilon"),
    ("trainer.max_grad_norm=-1", "trainer.max_grad_norm"),
    ("trainer.max_grad_norm=inf", "trainer.max_grad_norm"),
    ("diffusion.timestep_bias=noisy", "diffusion.timestep_bias"),
    ("diffusion.timestep_bias_portion=0", "diffusion.timestep_bias_portion"),
    ("diffusion.timestep_bias_multiplier=nan", "diffusion.timestep_bias_multiplier"),
    ("diffusion.loss_weighting=x0", "diffusion.loss_weighting"),
    ("diffusion.snr_gamma=-1", "diffusion.snr_gamma"),
    ("trainer.mixed_precision=fp8", "trainer.mixed_precision"),
    ("trainer.strategy=zero3", "trainer.strategy"),
    ("trainer.strategy=fsdp", "trainer.strategy"),  # shards over GPUs; these tests run on the CPU
    ("trainer.cycles=0", "trainer.cycles"),
    ("diffusion.prediction=x0", "diffusion.prediction"),
    ("trainer.mixed_precision=bf16", "trainer.mixed_precision"),  # needs CUDA; these tests run on the CPU
    ("trainer.gradient_checkpointing=maybe", "trainer.gradient_checkpointing"),
    ("trainer.ema=yes", "trainer.ema"),
    ("trainer.ema_decay=1.5", "trainer.ema_decay"),
    ("trainer.log_every=0", "trainer.log_every"),
    ("trainer.tensorboard=2", "trainer.tensorboard"),
    ("trainer.checkpoint_every=-1", "trainer.checkpoint_every"),
    ("trainer.keep_checkpoints=-1", "trainer.keep_checkpoints"),
    ("data.frames=0", "data.frames"),
    ("data.frames=64", "data.frames"),  # longer than motion.max_seq_length
    ("data.stride=0", "data.stride"),
    ("data.size=0", "data.size"),
    ("data.size=30", "data.size"),
    ("data.size=100000", "data.size"),
    ("data.flip=sometimes", "data.flip"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.max_skips=-1", "data.max_skips"),
    ("data.video_folder=/nonexistent/videos", "data.video_folder"),
    ("data.captions=/nonexistent/captions.csv", "data.captions"),
    ("data=webvid data.csv=/nonexistent/webvid.csv", "data.csv"),
    ("motion.num_attention_heads=0", "motion.num_attention_heads"),
    ("motion.num_attention_heads=3", "num_attention_heads"),  # does not divide the tiny UNet's 32 channels
    ("motion.max_seq_length=0", "motion.max_seq_length"),
    ("motion.transformer_layers_per_block=0", "motion.transformer_layers_per_block"),
    ("motion.allow_pickle=perhaps", "motion.allow_pickle"),
    ("motion.init_path=/nonexistent/mm.safetensors", "motion.init_path"),
    ("validation.every=-1", "validation.every"),
    ("validation.steps=0", "validation.steps"),
    ("validation.steps=5000", "validation.steps"),
    ("validation.guidance_scale=nan", "validation.guidance_scale"),
    ("validation.fps=0", "validation.fps"),
    ("validation.prompts=hello", "validation.prompts"),
    ("validation.every=1 validation.prompts=[]", "validation.prompts"),
    ("trainer.resume=/nonexistent/checkpoint", "trainer.resume"),
]


@pytest.mark.parametrize("overrides, key", TRAIN_ROWS, ids=[row[0] for row in TRAIN_ROWS])
def test_a_bad_train_value_is_one_line_naming_the_key_exit_2_and_no_run(overrides, key, videos, tmp_path, capsys):
    assert_refused(["train", "motion_module", *TINY_TRAIN, f"data.video_folder={videos}", *overrides.split()],
                   key, tmp_path, capsys)


# Weight files and checkpoints: (overrides with {names} from the `files` fixture, key named, what the line says).
TRAIN_FILE_ROWS = [
    ("motion.init_path={root}/weights.ckpt", "motion.init_path", "motion.allow_pickle=true"),
    ("motion.init_path={root}/text.safetensors", "motion.init_path", "not a checkpoint file"),
    ("motion.init_path={root}/hostile.ckpt motion.allow_pickle=true", "motion.init_path", "other than tensors"),
    ("motion.init_path={root}/hostile.safetensors", "motion.init_path", "pickle"),
    ("trainer.resume={root}/hostile_state trainer.max_steps=3", "training_state.pt", "other than tensors"),
    ("trainer.resume={root}/text_state trainer.max_steps=3", "training_state.pt", "not a PyTorch checkpoint"),
    ("trainer.resume={trained}", "trainer.resume", "checkpoints/last"),  # a run directory, not its checkpoint
    ("trainer.resume={checkpoint} trainer.max_steps=2", "trainer.max_steps", "nothing to train"),
    ("trainer.resume={checkpoint} trainer.max_steps=3 model=toy", "trainer.resume", "block_out_channels=[32, 64] there"),
    ("trainer.resume={checkpoint} trainer.max_steps=3 model.seed=1", "trainer.resume", "tiny (seed 0)"),  # same shapes
    ("trainer.resume={checkpoint} trainer.max_steps=3 motion.num_attention_heads=4", "motion.num_attention_heads", "=2"),
    ("trainer.resume={checkpoint} trainer.max_steps=3 motion.max_seq_length=16", "motion.max_seq_length", "=32"),
]


@pytest.mark.parametrize("overrides, key, phrase", TRAIN_FILE_ROWS, ids=[row[0].split("}")[-1] for row in TRAIN_FILE_ROWS])
def test_a_bad_train_file_is_one_line_exit_2_no_run_and_no_code_runs(overrides, key, phrase, files, videos, tmp_path, capsys):
    overrides = overrides.format(**files).split()
    assert_refused(["train", "motion_module", *TINY_TRAIN, f"data.video_folder={videos}", *overrides], key, tmp_path,
                   capsys, phrase)
    assert not files["marker"].exists()


GENERATE_FILE_ROWS = [
    ("motion.path={root}/weights.ckpt", "motion.path", "motion.allow_pickle=true"),
    ("motion.path={root}/text.safetensors", "motion.path", "not a checkpoint file"),
    ("motion.path={root}/hostile.ckpt motion.allow_pickle=true", "motion.path", "other than tensors"),
    ("motion.path={root}/hostile.bin", "motion.path", "pickle"),
    ("motion.path={root}/hostile.safetensors motion.allow_pickle=true", "motion.path", "other than tensors"),
]


@pytest.mark.parametrize("overrides, key, phrase", GENERATE_FILE_ROWS, ids=[row[0].split("}")[-1] for row in GENERATE_FILE_ROWS])
def test_a_bad_motion_file_for_animatediff_is_one_line_exit_2_no_run_and_no_code_runs(overrides, key, phrase, files,
                                                                                       tmp_path, capsys):
    assert_refused([*TINY_ANIMATEDIFF, *overrides.format(**files).split()], key, tmp_path, capsys, phrase)
    assert not files["marker"].exists()


def test_a_pickle_motion_module_loads_with_the_opt_in(files):
    """The opt-in is all it takes for a harmless pickle (still read with weights_only): the same weights."""
    from stylevid.models.motion_module import load_motion_adapter

    loaded = load_motion_adapter(str(files["root"] / "weights.ckpt"), allow_pickle=True, num_attention_heads=2)
    expected = tiny_motion_adapter(seed=0).state_dict()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items())


def test_a_diverging_run_stops_on_one_line_naming_the_step_and_keeps_the_last_good_checkpoint(videos, tmp_path, capsys):
    """lr=1e30: step 1 is finite (the zero-initialised output still hides the huge weights), step 2's loss is NaN."""
    run_dir = tmp_path / "run"
    code, _, err = run_stylevid(["train", "motion_module", *TINY_TRAIN, f"data.video_folder={videos}", "trainer.lr=1e30",
                                 "trainer.max_steps=4", "trainer.checkpoint_every=1", f"output_dir={run_dir}"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "diverged" in lines[0] and "at step 2" in lines[0] and "step_0000001" in lines[0]
    assert not (run_dir / "result.json").exists()  # the run does not look finished
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last", "step_0000001"]
    from safetensors.torch import load_file

    weights = load_file(str(checkpoints / "last" / "weights" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1]
