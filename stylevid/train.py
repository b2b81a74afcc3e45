"""`run_train(cfg)`: the train task (`stylevid train <target> ...`), also under torchrun or `accelerate launch`.

Under torchrun (WORLD_SIZE > 1) every rank trains its shard; rank 0 alone chooses the run directory
(broadcast to the others) and writes logs, checkpoints, validation videos and the final module.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .io.run_dir import RESULT_FILE, check_output_dir, default_run_dir, peak_memory, versions, write_json_atomic
from .models.loading import resolve_device
from .progress import StageReporter
from .distributed import broadcast_from_main, current_rank, rank_device

log = logging.getLogger(__name__)


def run_train(cfg: DictConfig, reporter: StageReporter | None = None, hydra_job_dir: str | None = None) -> Path:
    """Train `cfg.target.name` and return the run directory (on every rank)."""
    reporter = reporter or StageReporter()
    from .training.targets import get_target

    target_cls = get_target(str(cfg.target.name))
    from .training.checkpoint import check_resume_step, load_checkpoint
    from .training.settings import check_train_config

    # Everything a user typed is checked before a run directory is chosen or a model loads.
    check_train_config(cfg)
    resume = str(cfg.trainer.resume) if cfg.trainer.get("resume") else None
    checkpoint = load_checkpoint(resume) if resume else None
    if checkpoint:
        check_resume_step(resume, checkpoint[1], int(cfg.trainer.max_steps))
    device = resolve_device(str(cfg.device))
    ctx = current_rank(device)
    device = rank_device(device, ctx)  # cuda:LOCAL_RANK under torchrun (current_rank made it the current device)

    run_dir = None
    if ctx.is_main:
        if cfg.get("output_dir"):
            run_dir = check_output_dir(cfg.output_dir)
        elif hydra_job_dir is not None:
            run_dir = check_output_dir(hydra_job_dir)
        else:
            run_dir = default_run_dir(cfg.get("outputs_root", "outputs"), "train", target_cls.name)
    run_dir = Path(broadcast_from_main(str(run_dir) if run_dir else None, ctx))

    from .training.loop import Trainer

    with reporter.stage("loading model"):
        trainer = Trainer(cfg, target_cls, run_dir if ctx.is_main else None, ctx, device, reporter)
        if checkpoint:
            trainer.resume(resume, checkpoint)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    started = time.perf_counter()
    summary = trainer.train()
    with reporter.stage("writing"):
        files = trainer.export()  # every rank: the weights are gathered from all of them under FSDP
    if ctx.is_main:
        import torch

        model = cfg.get("model")
        result = {
            "task": "train",
            "target": target_cls.name,
            "seed": int(cfg.seed),
            "model": {"name": model.get("name"), "path": model.get("path")} if model is not None else None,
            **trainer.target.summary(),
            "diffusion": OmegaConf.to_container(cfg.diffusion) if cfg.get("diffusion") is not None else None,
            "trainer": {"strategy": str(cfg.trainer.strategy), "mixed_precision": trainer.precision,
                        "batch_size": trainer.batch_size, "grad_accum": trainer.grad_accum},
            "world_size": ctx.world_size,
            "resumed_from": resume,
            **summary,
            "losses_tail": trainer.losses[-10:],
            "files": files,
            "device": str(device),
            "threads": torch.get_num_threads(),  # intra-op threads: a CPU run's wall time depends on them
            "timings_s": {**reporter.timings, "total_train": time.perf_counter() - started},
            "memory": peak_memory(device),
            "versions": versions(),
        }
        write_json_atomic(run_dir / RESULT_FILE, result)
        log.info("wrote %s", run_dir)
    return run_dir
