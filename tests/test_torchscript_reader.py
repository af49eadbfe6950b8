"""TorchScript archives read as data: the tensors ``torch.jit.load`` would give, none of the archive's code run.

The archives are real ``torch.jit.save`` output (saving runs nothing of a stranger's); only the reading is under
test, against ``torch.jit.load(...).state_dict()`` where loading is harmless, and against files whose loading
runs code (``torch.jit.load`` creates a file from them: the proof that the test can fail).
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_clip, torchscript_archive, write_image

import clip
import generate_cam
from clip.torchscript import read_torchscript_state_dict


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():  # torch.jit's deprecation and tracer notices
        warnings.simplefilter("ignore")
        yield


def jit_state(path: Path) -> dict[str, torch.Tensor]:
    """What ``torch.jit.load`` makes of a harmless archive (the reference)."""
    return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def assert_same_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert got[key].stride() == value.stride() and torch.equal(got[key], value), key


def openai_traced(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny CLIP in OpenAI's own module layout (open_clip's build from an OpenAI state dict, fp16), traced on
    ``(image, text)`` and saved as OpenAI made its released files; returns the fp16 state dict it was built from."""
    open_clip = pytest.importorskip("open_clip")
    state = {k: v.half() if v.is_floating_point() else v for k, v in tiny_clip(seed).state_dict().items()}
    model = open_clip.model.build_model_from_openai_state_dict(dict(state)).eval()
    image, text = torch.randn(1, 3, 64, 64, dtype=torch.float16), clip.tokenize(["a bird"])
    torch.jit.save(torch.jit.trace(model, (image, text), check_trace=False), str(path))
    return state


def test_this_projects_clip_scripted_gives_its_state_dict_and_loads_identically(tmp_path):
    model = tiny_clip()
    torchscript_archive(model.state_dict(), tmp_path / "scripted.pt", half=False)  # its modules, scripted
    state = read_torchscript_state_dict(tmp_path / "scripted.pt")
    assert_same_tensors(state, jit_state(tmp_path / "scripted.pt"))
    extra = {"input_resolution", "context_length", "vocab_size"}
    assert_same_tensors({k: v for k, v in state.items() if k not in extra},
                        {k: v.detach() for k, v in model.state_dict().items()})
    loaded = clip.load_model(tmp_path / "scripted.pt")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), model.encode_image(x))


def test_an_openai_layout_clip_traced_as_openai_released_it_gives_jits_state_dict(tmp_path):
    state = openai_traced(tmp_path / "ViT-tiny.pt")
    got = read_torchscript_state_dict(tmp_path / "ViT-tiny.pt")
    assert_same_tensors(got, jit_state(tmp_path / "ViT-tiny.pt"))
    assert got["visual.conv1.weight"].dtype == torch.float16
    assert torch.equal(got["visual.conv1.weight"], state["visual.conv1.weight"])
    weights = {k: v for k, v in got.items() if k != "attn_mask"}  # open_clip's mask buffer, not OpenAI's
    assert sorted(weights) == sorted(state)  # open_clip keeps some in float32: compare the values
    assert all(torch.equal(weights[k].to(v.dtype), v) for k, v in state.items())


class WithConstants(torch.nn.Module):
    """Parameters, buffers (one non-persistent), a BatchNorm and a tensor that tracing folds into a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.norm = torch.nn.BatchNorm1d(2)
        self.register_buffer("mask", torch.tril(torch.ones(2, 2)), persistent=False)
        self.register_buffer("steps", torch.arange(4))
        self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.lin(x)) @ self.mask + torch.tensor([1.0, 2.0])
        for layer in self.layers:
            x = layer(x)
        return x + self.steps.sum()


@pytest.mark.parametrize("how", ["trace", "script"])
def test_buffers_containers_and_constants(tmp_path, how):
    module = WithConstants().eval()
    with torch.no_grad():
        module.norm.running_mean.add_(torch.randn(2))
    scripted = torch.jit.trace(module, torch.randn(4, 3)) if how == "trace" else torch.jit.script(module)
    torch.jit.save(scripted, str(tmp_path / "m.pt"))
    assert any(n.endswith("constants.pkl") for n in zipfile.ZipFile(tmp_path / "m.pt").namelist())
    assert_same_tensors(read_torchscript_state_dict(tmp_path / "m.pt"), jit_state(tmp_path / "m.pt"))


def rewrite(src: Path, dest: Path, rename=lambda name: name, replace: dict[str, bytes] | None = None) -> None:
    """A copy of the zip ``src`` with its members renamed and some replaced (stored, as torch writes them)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            for suffix, new in (replace or {}).items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(rename(info.filename), data)


@pytest.mark.parametrize("folder", ["archive", "ViT-B-32", "weird name"])
def test_the_archives_top_folder_may_have_any_name(tmp_path, folder):
    openai_traced(tmp_path / "traced.pt")
    rewrite(tmp_path / "traced.pt", tmp_path / "renamed.pt", lambda n: folder + "/" + n.split("/", 1)[1])
    assert_same_tensors(read_torchscript_state_dict(tmp_path / "renamed.pt"), jit_state(tmp_path / "traced.pt"))


class RunsCodeWhenLoaded(torch.nn.Module):
    """A scripted module whose ``__setstate__`` (run by ``torch.jit.load``) creates the file it names."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.marker = state[1]
        self.training = state[2]
        print("code from the archive ran")
        self.weight = state[0] + torch.from_file(state[1], True, 2, dtype=torch.float32)


class DictState(RunsCodeWhenLoaded):
    """The same side effect, with a state that looks like plain attributes."""

    @torch.jit.export
    def __getstate__(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}

    @torch.jit.export
    def __setstate__(self, state: dict[str, torch.Tensor]) -> None:
        self.marker = "/tmp/never"
        self.training = False
        self.weight = state["weight"] + torch.from_file(self.marker + "-unused", True, 2, dtype=torch.float32)


def test_a_scripted_setstate_is_refused_and_never_runs(tmp_path, capfd):
    marker = tmp_path / "RAN"
    torch.jit.save(torch.jit.script(RunsCodeWhenLoaded(str(marker))), str(tmp_path / "evil.pt"))
    with pytest.raises(clip.ClipCheckpointError, match="refused.*__setstate__"):
        read_torchscript_state_dict(tmp_path / "evil.pt")
    with pytest.raises(clip.ClipCheckpointError, match="evil.pt: refused"):
        clip.load(tmp_path / "evil.pt", device="cpu")
    assert not marker.exists() and "ran" not in capfd.readouterr().out
    torch.jit.load(str(tmp_path / "evil.pt"))  # what reading it with TorchScript does
    assert marker.exists() and "code from the archive ran" in capfd.readouterr().out


def test_a_dict_state_is_read_as_data_without_its_setstate(tmp_path):
    module = DictState(str(tmp_path / "unused"))
    torch.jit.save(torch.jit.script(module), str(tmp_path / "dict.pt"))
    state = read_torchscript_state_dict(tmp_path / "dict.pt")
    assert list(state) == ["weight"] and torch.equal(state["weight"], torch.ones(2))
    assert not Path("/tmp/never-unused").exists()


def test_generate_cam_refuses_the_archive_in_one_line_and_nothing_runs(tmp_path, capfd):
    marker = tmp_path / "RAN"
    torch.jit.save(torch.jit.script(RunsCodeWhenLoaded(str(marker))), str(tmp_path / "evil.pt"))
    write_image(tmp_path / "data" / "a" / "0.jpg")
    code = generate_cam.main(["--dataset_path", str(tmp_path / "data"), "--save_dir", str(tmp_path / "out"),
                              "--backbone", "clip", "--model_path", str(tmp_path / "evil.pt"), "--concepts", "red",
                              "--num_workers", "0", "--device", "cpu"])
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "evil.pt" in lines[0] and "refused" in lines[0], lines
    assert not marker.exists() and "ran" not in captured.out


class Shell:
    def __reduce__(self):
        return (Path.touch, (Path("/never/created"),))


@pytest.mark.parametrize("payload, message", [
    (pickle.dumps(Shell(), protocol=2), "names __builtin__.getattr, which could run code"),
    (pickle.dumps({"weight": 1}, protocol=2), "holds a dict, not a module"),
    (b"\x80\x02ctorch.classes.quantized\nLinearPackedParamsBase\n.", "could run code"),
    (b"\x80\x02c__torch__.torch.classes.quantized\nLinearPackedParamsBase\n)\x81.", "could run code"),
    (b"not a pickle", "unreadable"),
])
def test_data_pkl_holding_anything_but_tensors_and_modules_is_refused(tmp_path, payload, message):
    openai_traced(tmp_path / "traced.pt")
    rewrite(tmp_path / "traced.pt", tmp_path / "bad.pt", replace={"/data.pkl": payload})
    with pytest.raises(clip.ClipCheckpointError, match=message) as info:
        read_torchscript_state_dict(tmp_path / "bad.pt")
    assert str(info.value).startswith(str(tmp_path / "bad.pt")) and "\n" not in str(info.value)


def test_storages_that_do_not_fit_are_refused(tmp_path):
    openai_traced(tmp_path / "traced.pt")
    with zipfile.ZipFile(tmp_path / "traced.pt") as z:
        first = next(n for n in z.namelist() if "/data/" in n)
    rewrite(tmp_path / "traced.pt", tmp_path / "short.pt", replace={first: b"\0" * 6})
    with pytest.raises(clip.ClipCheckpointError, match="not the .* its tensors need"):
        read_torchscript_state_dict(tmp_path / "short.pt")
    rewrite(tmp_path / "traced.pt", tmp_path / "two.pt")
    with zipfile.ZipFile(tmp_path / "two.pt", "a") as z:
        z.writestr("other/data.pkl", b"")
    with pytest.raises(clip.ClipCheckpointError, match="2 data.pkl"):
        read_torchscript_state_dict(tmp_path / "two.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "traced.pt").read_bytes()[:5000])
    with pytest.raises(clip.ClipCheckpointError, match="cut.pt"):
        read_torchscript_state_dict(tmp_path / "cut.pt")


def test_clip_load_never_calls_torchscript(tmp_path, monkeypatch):
    model = tiny_clip()
    torchscript_archive(model.state_dict(), tmp_path / "scripted.pt", half=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("TorchScript was asked to load the archive")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    monkeypatch.setattr(torch._C, "import_ir_module", forbidden)
    loaded, _ = clip.load(tmp_path / "scripted.pt", device="cpu")
    assert torch.equal(loaded.visual.conv1.weight, model.visual.conv1.weight)
