"""Runs the official DINOv2 code (PyPI ``dinov2==0.0.1.dev2``) in its own process.

Its top-level package is also called ``dinov2``, so it is installed into an isolated folder
(``make test-deps`` puts it in ``.oracles/dinov2_official``) and imported from there, never beside ours.
Usage: python oracle_dinov2_official.py ORACLE_DIR IN.pt OUT.pt
IN.pt holds {"state": state dict, "config": dict, "inputs": [tensors]}; OUT.pt gets the patch tokens.
"""

import sys
from functools import partial

oracle_dir, in_path, out_path = sys.argv[1:4]
sys.path.insert(0, oracle_dir)

import torch  # noqa: E402
from dinov2.layers import MemEffAttention, NestedTensorBlock  # noqa: E402
from dinov2.models.vision_transformer import DinoVisionTransformer  # noqa: E402

import dinov2  # noqa: E402

assert dinov2.__file__.startswith(oracle_dir), dinov2.__file__
payload = torch.load(in_path, weights_only=True)
cfg = payload["config"]
model = DinoVisionTransformer(
    img_size=cfg["img_size"], patch_size=cfg["patch_size"], embed_dim=cfg["embed_dim"], depth=cfg["depth"],
    num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"], init_values=1.0, ffn_layer=cfg["ffn"],
    block_chunks=0, block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
)
model.load_state_dict(payload["state"], strict=True)
model.eval()
with torch.no_grad():
    outs = [model.forward_features(x)["x_norm_patchtokens"] for x in payload["inputs"]]
    cls = [model(x) for x in payload["inputs"]]
torch.save({"patch": outs, "cls": cls}, out_path)
