"""The one component loader: every kind of source through `load_component`, and every caller family using it.

Nothing here reaches for the network: hub ids are never cached ones, with HF_HUB_OFFLINE=1, and the loader
answers them from the local cache alone (a fake `pretrained` records that it was not even asked).
"""

import ast
import pickle
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

import stylevid
from stylevid.errors import UserInputError
from stylevid.models.components import load_component, read_weights

HUB_ID = "stylevid-test-nobody/no-such-model"
WEIGHTS = {"weight": torch.arange(6.0).reshape(2, 3)}


def offline_line(key: str) -> str:
    """The shared loader's one line for a hub id that is not cached, with the hub offline."""
    return rf"^{re.escape(key)}=stylevid-test-nobody/no-such-model(:\S+)? is not in the local cache and the hub is " \
           rf"offline \(HF_HUB_OFFLINE=1\); pass {re.escape(key)}=<[^\n]+$"


class Hostile:
    """Unpickling this runs code (it would create `marker`): what weights_only must refuse."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def sources(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (tmp_path / "not_a_model").mkdir()
    save_file(WEIGHTS, str(tmp_path / "weights.safetensors"))
    save_file(WEIGHTS, str(tmp_path / "misnamed.bin"))
    torch.save(WEIGHTS, tmp_path / "weights.ckpt")
    (tmp_path / "hostile.ckpt").write_bytes(pickle.dumps(Hostile(tmp_path / "marker")))
    (tmp_path / "notes.safetensors").write_text("not weights\n")
    # a hub cache holding one repository's config.json (the layout huggingface_hub writes)
    cache = tmp_path / "hub-cache"
    repo = cache / "models--stylevid-test--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    return tmp_path


def recording_pretrained(calls):
    def pretrained(source, **kwargs):
        calls.append((source, kwargs))
        return ("pretrained", source, kwargs)

    return pretrained


def weights_file(path):
    """A single-file form reading by content (as the motion module's does)."""
    return read_weights(path, "thing.path", allow_pickle=True)[0]


# (row id, source under tmp_path (or a hub id), load_component options, expected: callable(result, calls, tmp) or
# an error regex). `single_file` None means the component has no single-file form.
ROWS = [
    ("local directory", "{tmp}/model", {},
     lambda result, calls, tmp: result[1] == f"{tmp}/model" and calls[0][1] == {"local_files_only": True, "torch_dtype": "x"}),
    ("directory missing its config", "{tmp}/not_a_model", {},
     r"^thing\.path=\S+/not_a_model is a directory but not a thing \(no config\.json\)$"),
    ("directory missing its subfolder config", "{tmp}/model", {"subfolder": "unet"},
     r"is a directory but not a thing \(no unet/config\.json\)$"),
    ("safetensors file", "{tmp}/weights.safetensors", {"single_file": weights_file},
     lambda result, calls, tmp: torch.equal(result["weight"], WEIGHTS["weight"]) and not calls),
    ("file without a single-file form", "{tmp}/weights.safetensors", {"single_file": None},
     r"^thing\.path=\S+weights\.safetensors is a file; a thing loads from a directory or a hub id, not a single file$"),
    ("pickle refused", "{tmp}/weights.ckpt", {"single_file": weights_file},
     r"^thing\.path=\S+weights\.ckpt is a pickle checkpoint; convert it to \.safetensors, or pass thing\.allow_pickle=true"),
    ("pickle allowed, weights only", "{tmp}/weights.ckpt", {"single_file": weights_file, "allow_pickle": True},
     lambda result, calls, tmp: torch.equal(result["weight"], WEIGHTS["weight"])),
    ("hostile pickle allowed, still weights only", "{tmp}/hostile.ckpt", {"single_file": weights_file, "allow_pickle": True},
     r"hostile\.ckpt holds objects other than tensors and is refused"),
    ("wrong suffix", "{tmp}/misnamed.bin", {"single_file": weights_file},
     r"^thing\.path=\S+misnamed\.bin is a safetensors file named \.bin; rename it to \.safetensors$"),
    ("not a checkpoint", "{tmp}/notes.safetensors", {"single_file": weights_file},
     r"notes\.safetensors is not a checkpoint file"),
    ("nonexistent path", "{tmp}/missing/model", {},
     r"^thing\.path \S+/missing/model does not exist; pass thing\.path=<local directory>$"),
    ("neither a path nor a hub id", "no-slash-name", {"single_file": weights_file},
     r"^thing\.path no-slash-name does not exist; pass thing\.path=<local directory or file>$"),
    ("hub id offline, not cached", HUB_ID, {}, offline_line("thing.path")),
    ("hub id offline, cached", "stylevid-test/cached", {"cache_dir": "{tmp}/hub-cache", "revision": "main"},
     lambda result, calls, tmp: calls == [("stylevid-test/cached", {"cache_dir": f"{tmp}/hub-cache", "local_files_only": True,
                                                                    "revision": "main", "torch_dtype": "x"})]),
]


@pytest.mark.parametrize("source, options, expected", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_every_kind_of_source_through_the_one_loader(source, options, expected, sources, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []
    options = {k: v.format(tmp=sources) if isinstance(v, str) else v for k, v in options.items()}
    options.setdefault("torch_dtype", "x")
    load = lambda: load_component(source.format(tmp=sources), key="thing.path", what="a thing",  # noqa: E731
                                  pretrained=recording_pretrained(calls), **options)
    if isinstance(expected, str):
        with pytest.raises(UserInputError, match=expected) as error:
            load()
        assert "\n" not in str(error.value)
        if source == HUB_ID:
            assert calls == []  # offline and not cached: pretrained() is not even asked
    else:
        assert expected(load(), calls, sources)
    assert not (sources / "marker").exists()  # no code from a pickle ran


def test_a_hub_failure_that_is_not_the_cache_is_its_first_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def pretrained(source, **kwargs):
        raise OSError(f"{source} is not a valid model identifier\nsecond line with details")

    with pytest.raises(UserInputError, match=r"^thing\.path=owner/typo could not be loaded: owner/typo is not a valid "
                                             r"model identifier; pass thing\.path=<local directory>$"):
        load_component("owner/typo", key="thing.path", pretrained=pretrained)
    # only local files asked for: the same cache line, naming that instead of HF_HUB_OFFLINE
    with pytest.raises(UserInputError, match=r"^thing\.path=owner/typo is not in the local cache and only local files"):
        load_component("owner/typo", key="thing.path", pretrained=pretrained, local_files_only=True)


# --- every caller family uses it ------------------------------------------------------------------------------


def assert_offline_line(load, key):
    with pytest.raises(UserInputError, match=offline_line(key)) as error:
        load()
    assert "\n" not in str(error.value)


def test_pipeline_uses_the_shared_offline_line(monkeypatch):
    from stylevid.models.loading import load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_offline_line(lambda: load_pipeline(OmegaConf.create({"name": "sd15", "path": HUB_ID}), torch.float32),
                        "model.path")


def test_controlnet_uses_the_shared_offline_line(monkeypatch):
    from stylevid.models.controlnet import load_controlnet

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_offline_line(lambda: load_controlnet(HUB_ID, "canny", None, torch.float32), "controlnet.path")


def test_motion_adapter_uses_the_shared_offline_line(monkeypatch):
    from stylevid.models.motion_module import load_motion_adapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_offline_line(lambda: load_motion_adapter(HUB_ID), "motion.path")
    assert_offline_line(lambda: load_motion_adapter(HUB_ID, key="motion.init_path"), "motion.init_path")


def test_annotators_use_the_shared_offline_line(monkeypatch):
    from stylevid.conditions.depth import DepthAnnotator
    from stylevid.conditions.pose import VitPoseDetector

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_offline_line(lambda: DepthAnnotator.from_pretrained(HUB_ID), "annotator.path")
    assert_offline_line(lambda: VitPoseDetector.from_pretrained(HUB_ID), "annotator.path")


def test_clip_and_metric_networks_use_the_shared_offline_line(monkeypatch):
    from stylevid.metrics.clip import load_clip
    from stylevid.metrics.common import resolve_weights_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_offline_line(lambda: load_clip(HUB_ID), "metrics.clip.model")
    assert_offline_line(lambda: resolve_weights_file(f"{HUB_ID}:i3d.pt", "metrics.fvd.i3d_path", "I3D"),
                        "metrics.fvd.i3d_path")


# Our own wrappers, which go through the loader themselves.
_WRAPPERS = {"DepthAnnotator", "VitPoseDetector", "cls"}
_HUB_CALLS = {"from_pretrained", "from_single_file", "hf_hub_download", "snapshot_download"}
_NOT_YET_MOVED: set[str] = set()  # every direct call has moved onto the loader


def test_no_loader_outside_the_shared_one_calls_the_hub_libraries_itself():
    """The five copies are gone: no `X.from_pretrained(...)`, `from_single_file(...)` or `hf_hub_download(...)`
    call in the package except in the shared loader and the in-memory tiny models (`Cls.from_pretrained` passed
    as a callable to `load_component` is not a call)."""
    package = Path(stylevid.__file__).parent
    allowed = {package / "models" / "components.py", package / "models" / "tiny.py"}
    found = []
    for path in sorted(package.rglob("*.py")):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            receiver = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
            if name in _HUB_CALLS and receiver not in _WRAPPERS:
                found.append(f"{path.relative_to(package)} {ast.unparse(func)}")
    assert sorted(set(found) - _NOT_YET_MOVED) == []
    # and the loaders named in the brief do go through it
    for relative in ("models/loading.py", "models/controlnet.py", "models/motion_module.py", "conditions/__init__.py",
                     "metrics/clip.py", "metrics/common.py"):
        text = (package / relative).read_text()
        assert "load_component(" in text or "download_hub_file(" in text, relative
