import os

# Tests never reach for the network: any hub lookup fails at once instead of waiting on a connection.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    thousands of small ops gain nothing from a second thread, and on a shared 2-core machine two spin-wait on each
    other (a VideoGen base step took 4.7 s with two, 0.3 s with one; a pipeline test 18 s instead of 0.6 s). The
    suite's setting is put back afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_pipe():
    from stylevid.models.tiny import tiny_pipeline

    return tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def style_image_path(tmp_path_factory):
    """A textured style image with strong colour statistics, unlike the tiny model's outputs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    image = np.zeros((72, 96, 3), dtype=np.uint8)
    image[..., 0] = 220
    image[::4, :, 2] = 255
    image += rng.integers(0, 30, image.shape, dtype=np.uint8)
    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray(image).save(path)
    return str(path)


def run_stylevid(args, capsys):
    """Run `stylevid ARGS` in this process; return (exit code, stdout, stderr)."""
    from stylevid.cli.main import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
