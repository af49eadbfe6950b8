"""dinov2/: shapes, strict loading of official-format files, and parity with independent implementations."""

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import dinov2
from dinov2 import CheckpointError, DinoVisionTransformer, ViTConfig, load_dinov2

ROOT = Path(__file__).resolve().parents[1]
ORACLE_DIR = Path(os.environ.get("DINOV2_OFFICIAL_DIR", ROOT / ".oracles" / "dinov2_official"))
TOL = 1e-4  # maximum absolute difference of normalised patch tokens


def random_model(seed: int = 0, **cfg) -> DinoVisionTransformer:
    config = ViTConfig(**{"embed_dim": 128, "depth": 2, "num_heads": 2, **cfg})
    torch.manual_seed(seed)
    model = DinoVisionTransformer(config).eval()
    with torch.no_grad():  # non-trivial values everywhere, not the init's ones and zeros
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("ffn", ["mlp", "swiglufused"])
def test_matches_official_dinov2(tmp_path, ffn):
    if not (ORACLE_DIR / "dinov2" / "models" / "vision_transformer.py").exists():
        pytest.fail(f"official DINOv2 code not found in {ORACLE_DIR}: run `make test-deps`")
    model = random_model(ffn=ffn)
    torch.manual_seed(1)
    inputs = [torch.randn(2, 3, 224, 224), torch.randn(1, 3, 518, 364), torch.randn(1, 3, 518, 518),
              torch.randn(1, 3, 28, 70)]
    payload = {"state": model.state_dict(), "config": asdict(model.config), "inputs": inputs}
    torch.save(payload, tmp_path / "in.pt")
    subprocess.run([sys.executable, str(ROOT / "tests" / "oracle_dinov2_official.py"), str(ORACLE_DIR),
                    str(tmp_path / "in.pt"), str(tmp_path / "out.pt")], check=True, cwd=tmp_path,
                   capture_output=True)
    ref = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        for x, want, want_cls in zip(inputs, ref["patch"], ref["cls"]):
            got = model.forward_features(x)["x_norm_patchtokens"]
            assert got.shape == want.shape == (x.shape[0], (x.shape[2] // 14) * (x.shape[3] // 14), 128)
            assert (got - want).abs().max().item() < TOL
            assert (model(x) - want_cls).abs().max().item() < TOL


@pytest.mark.parametrize("registers", [0, 4])
def test_matches_timm(registers):
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    model = random_model(num_register_tokens=registers, img_size=126)
    kw = dict(img_size=126, patch_size=14, embed_dim=128, depth=2, num_heads=2, init_values=1.0,
              reg_tokens=registers, no_embed_class=True, dynamic_img_size=True, num_classes=0,
              global_pool="token")
    ref = VisionTransformer(**kw).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "mask_token"}
    if registers:
        state["reg_token"] = state.pop("register_tokens")
    # timm keeps the class position apart from the patch positions
    pos = state.pop("pos_embed")
    state["cls_token"] = state["cls_token"] + pos[:, :1]
    state["pos_embed"] = pos[:, 1:]
    ref.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 126, 126)  # the learnt grid: no interpolation, where timm and DINOv2 agree exactly
    with torch.no_grad():
        want = ref.forward_features(x)[:, ref.num_prefix_tokens:]
        got = model.forward_features(x)["x_norm_patchtokens"]
    assert (got - want).abs().max().item() < TOL
    assert timm.__version__


def test_registry_shapes_match_official_names():
    # Widths, depths and heads of the official release (DINOv2 paper, Table 17 / model card).
    expect = {"vit_small": (384, 12, 6), "vit_base": (768, 12, 12), "vit_large": (1024, 24, 16),
              "vit_giant2": (1536, 40, 24)}
    for name, (d, depth, heads) in expect.items():
        for suffix, regs in (("", 0), ("_reg4", 4)):
            c = dinov2.ARCHS[name + suffix]
            assert (c.embed_dim, c.depth, c.num_heads, c.num_register_tokens) == (d, depth, heads, regs)
    # The ViT-g feed-forward width of the official checkpoint (w12: [8192, 1536]).
    from dinov2.layers.mlp import swiglu_hidden
    assert swiglu_hidden(1536, 4.0) * 2 == 8192


def test_strict_load_roundtrip_and_arch_checks(tmp_path):
    model = random_model(num_register_tokens=4)
    path = tmp_path / "tiny_reg4.pth"
    torch.save(model.state_dict(), path)
    loaded = load_dinov2(str(path))
    assert loaded.num_register_tokens == 4 and loaded.config.num_heads == 2
    x = torch.randn(1, 3, 70, 42)
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x)["x_norm_patchtokens"],
                           model.forward_features(x)["x_norm_patchtokens"])
    with pytest.raises(CheckpointError, match="does not fit vit_base"):
        load_dinov2(str(path), arch="vit_base")
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_dinov2(str(path), arch="vit_huge")
    # the legacy (pre-zip) serialisation cannot be memory-mapped and loads the plain way
    torch.save(model.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert torch.equal(load_dinov2(str(tmp_path / "legacy.pth")).pos_embed, model.pos_embed)
    state = model.state_dict()
    del state["mask_token"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="mask_token"):
        load_dinov2(str(tmp_path / "missing.pth"))


def test_bad_files_are_checkpoint_errors(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_dinov2(str(tmp_path / "junk.pth"))
    with pytest.raises(CheckpointError, match="no such file"):
        load_dinov2(str(tmp_path / "absent.pth"))
    torch.save({"weight": torch.zeros(3, 4)}, tmp_path / "head.pth")
    with pytest.raises(CheckpointError, match="not a DINOv2 checkpoint"):
        load_dinov2(str(tmp_path / "head.pth"))


def test_rejects_sizes_that_are_not_multiples_of_the_patch():
    with pytest.raises(ValueError, match="multiple of the patch"):
        random_model()(torch.randn(1, 3, 30, 28))


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"cls_token": _Exploit(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_dinov2(str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_dinov2_knows_only_the_official_sizes_and_takes_more_by_registration():
    """The toy world's size is registered by finer_cam's loaders when they run, not written into dinov2/ and
    not at import; a name cannot be registered twice with different configurations."""
    import subprocess
    import sys

    code = ("import dinov2; assert 'vit_toy' not in dinov2.ARCHS, 'dinov2 knows the toy'; import finer_cam.models; "
            "assert 'vit_toy' not in dinov2.ARCHS, 'importing registered it'; finer_cam.models.register_toy_arch(); "
            "assert dinov2.build('vit_toy').embed_dim == 128")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    from dinov2 import ARCHS, register_arch

    register_arch("vit_small", ARCHS["vit_small"])  # the same again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_arch("vit_small", ARCHS["vit_base"])


def test_auto_takes_the_heads_of_a_registered_size_of_the_same_shape(tmp_path):
    """The number of heads is not in the weights: ``arch="auto"`` takes it from a registered size of the same
    shape (here 4 heads of 32, where DINOv2's rule of 64 a head would give 2), and the loaded model computes
    what the saved one does."""
    from dinov2 import ARCHS, ViTConfig, build, load_dinov2, register_arch

    register_arch("vit_test_heads", ViTConfig(embed_dim=128, depth=2, num_heads=4, img_size=56))
    try:
        torch.manual_seed(0)
        model = build("vit_test_heads").eval()
        torch.save(model.state_dict(), tmp_path / "m.pth")
        loaded = load_dinov2(str(tmp_path / "m.pth"), arch="auto").eval()
        assert loaded.config.num_heads == 4
        x = torch.randn(1, 3, 56, 56)
        with torch.no_grad():
            assert torch.allclose(model(x), loaded(x), atol=1e-6)
    finally:
        del ARCHS["vit_test_heads"]
