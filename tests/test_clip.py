"""clip/ against open_clip (an independent implementation) on the same random weights, and its loading."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import tiny_clip, torchscript_archive

import clip

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIP as OpenClip  # noqa: E402
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, resize_pos_embed  # noqa: E402
from open_clip.tokenizer import tokenize as open_clip_tokenize  # noqa: E402

TOL = 1e-4  # max abs difference of embeddings of magnitude ~1-3


def open_clip_model(image_size=64, seed=0) -> OpenClip:
    """open_clip's CLIP with QuickGELU and 64-dim heads (OpenAI's configuration), 2 heads a tower."""
    torch.manual_seed(seed)
    model = OpenClip(embed_dim=32, quick_gelu=True,
                     vision_cfg=CLIPVisionCfg(layers=2, width=128, patch_size=16, image_size=image_size, head_width=64),
                     text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=128, heads=2, layers=2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def test_image_and_text_embeddings_match_open_clip():
    oc = open_clip_model()
    ours = clip.build_model(oc.state_dict())
    assert ours.config.vision_heads == 2 and ours.config.transformer_heads == 2
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    texts = clip.tokenize(["a photo of a bird.", "red crown", "a very, very long & odd (text) #42!"])
    with torch.no_grad():
        assert (ours.encode_image(x) - oc.encode_image(x)).abs().max() < TOL
        assert (ours.encode_text(texts) - oc.encode_text(texts)).abs().max() < TOL
        assert torch.allclose(ours.logit_scale, oc.logit_scale)
        logits, logits_t = ours(x, texts)
        want = oc.logit_scale.exp() * torch.nn.functional.normalize(oc.encode_image(x), dim=-1) @ \
            torch.nn.functional.normalize(oc.encode_text(texts), dim=-1).T
    assert logits.shape == (3, 3) and torch.allclose(logits_t, logits.T)
    assert (logits - want).abs().max() < 1e-3


@pytest.mark.parametrize("size", [(96, 96), (96, 128)])
def test_other_image_sizes_match_open_clip_with_a_resized_position_grid(size):
    small = open_clip_model(image_size=64)
    big = open_clip_model(image_size=size)
    state = small.state_dict()
    resize_pos_embed(state, big)  # bicubic, as ours (antialias does not act when enlarging)
    big.load_state_dict(state)
    ours = clip.build_model(small.state_dict())  # interpolates the 4x4 grid on the fly
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (ours.encode_image(x) - big.encode_image(x)).abs().max() < TOL


def test_mean_pooling_is_the_mean_patch_token_after_ln_post():
    model = tiny_clip()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.visual.transformer(model.visual.prepare_tokens(x))
        want = model.visual.ln_post(tokens[:, 1:]).mean(1) @ model.visual.proj
        assert torch.allclose(model.encode_image(x, pool="mean"), want, atol=1e-6)
        assert not torch.allclose(model.encode_image(x, pool="cls"), want, atol=1e-3)


STRINGS = [
    "a photo of a bird with a red crown.", "Hello,   WORLD!!\tnew\nline", "&amp; &lt;b&gt; &amp;amp; &#39;",
    "naïve café résumé ÆØÅ", "東京 タワー 😀🐦", "it's we'll they'd I'M", "3.14159 and 2,718", "ﬁx ﬂow — “quotes” …",
    "<|endoftext|> typed by a user", "", "   ", "a" * 120, " ".join(["word"] * 90),
]


def test_token_ids_match_open_clip():
    ours = clip.tokenize(STRINGS, truncate=True)
    want = open_clip_tokenize(STRINGS)  # open_clip always truncates, ending on the end token
    assert ours.dtype == torch.long and ours.shape == (len(STRINGS), 77)
    assert torch.equal(ours, want)


def test_too_long_text_is_refused_unless_truncated():
    long = " ".join(["word"] * 90)
    with pytest.raises(clip.ContextLengthError, match="92 tokens long; the context holds 77"):
        clip.tokenize([long])
    ids = clip.tokenize(long, truncate=True)[0]
    assert ids[-1] == 49407 and ids[0] == 49406
    assert clip.tokenize("red crown", context_length=8).shape == (1, 8)


def test_decode_gives_the_cleaned_text_back():
    tok = clip.SimpleTokenizer()
    assert tok.decode(tok.encode("A  Red   Crown, &amp; café!")) == "a red crown , & café !"


def test_the_vocabulary_is_openais_file():
    data = clip.tokenizer.VOCAB_FILE.read_bytes()
    assert len(data) == 1_356_917
    assert hashlib.sha256(data).hexdigest() == clip.tokenizer.VOCAB_SHA256


def test_load_reads_openai_torchscript_archives_and_state_dicts(tmp_path):
    model = tiny_clip()
    torchscript_archive(model.state_dict(), tmp_path / "ViT-tiny.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    assert clip.is_torchscript(tmp_path / "ViT-tiny.pt") and not clip.is_torchscript(tmp_path / "plain.pth")
    from_archive, preprocess = clip.load(tmp_path / "ViT-tiny.pt", device="cpu")
    from_state, _ = clip.load(str(tmp_path / "plain.pth"), device="cpu")
    assert from_archive.dtype == torch.float32  # the archive's fp16 weights become fp32
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(from_archive.encode_image(x), model.half().float().encode_image(x))
        assert torch.equal(from_state.encode_image(x), tiny_clip().encode_image(x))
    from PIL import Image
    assert preprocess(Image.new("RGB", (100, 80))).shape == (3, 64, 64)


def test_load_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="jit=True"):
        clip.load("x.pt", device="cpu", jit=True)
    with pytest.raises(clip.ClipCheckpointError, match="no such file"):
        clip.load(tmp_path / "missing.pt", device="cpu")
    torch.save({"cls_token": torch.zeros(1, 1, 8)}, tmp_path / "dino.pth")
    with pytest.raises(clip.ClipCheckpointError, match="not a CLIP ViT checkpoint"):
        clip.load(tmp_path / "dino.pth", device="cpu")
    state = tiny_clip().state_dict()
    state["visual.layer1.0.conv1.weight"] = state.pop("visual.conv1.weight")
    torch.save(state, tmp_path / "resnet.pth")
    with pytest.raises(clip.ClipCheckpointError, match="ResNet CLIPs are not supported"):
        clip.load(tmp_path / "resnet.pth", device="cpu")
    state = tiny_clip().state_dict()
    state["visual.proj"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad_shape.pth")
    with pytest.raises(clip.ClipCheckpointError, match="size mismatch"):
        clip.load(tmp_path / "bad_shape.pth", device="cpu")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(clip.ClipCheckpointError, match="garbage.pt"):
        clip.load(tmp_path / "garbage.pt", device="cpu")


@pytest.mark.parametrize("name, shape, params", [
    # (embed, resolution, layers, width, patch, text width, text heads, text layers); OpenAI's parameter counts
    ("ViT-B/32", (512, 224, 12, 768, 32, 512, 8, 12), 151_277_313),
    ("ViT-B/16", (512, 224, 12, 768, 16, 512, 8, 12), 149_620_737),
    ("ViT-L/14", (768, 224, 24, 1024, 14, 768, 12, 12), 427_616_513),
    ("ViT-L/14@336px", (768, 336, 24, 1024, 14, 768, 12, 12), 427_944_193),
])
def test_the_released_architectures_are_read_off_their_shapes(name, shape, params):
    e, r, layers, w, p, tw, th, tl = shape
    config = clip.ClipConfig(e, r, layers, w, p, 77, 49408, tw, th, tl)
    with torch.device("meta"):  # shapes only: no memory
        model = clip.CLIP(config)
    assert sum(t.numel() for t in model.parameters()) == params
    assert clip.config_from_state_dict(model.state_dict()) == config
    assert config.vision_heads == w // 64
