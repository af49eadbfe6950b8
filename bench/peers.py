"""The reference ways of doing generate_cam.py's work, each run as its own process by bench_generate.py.

official:  pytorch-grad-cam 1.5.7 FinerCAM as the official Finer-CAM script uses it: batch 1, one forward
           and one backward per mode.
torchcam:  torchcam 0.5.0 FinerCAM: one forward per batch, then one autograd pass per mode.
Both load the same backbone and head, decode the same images with the same preprocessing and write one
.npy of normalised maps per image, so the whole-process times compare like for like.

Usage: python bench/peers.py {official,torchcam} MODEL HEAD IMAGE_DIR OUT_DIR BATCH [DEVICE [WORKERS]]
(torchcam decodes in WORKERS DataLoader processes, 0 by default, as generate_cam.py's --num_workers.)
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from finer_cam.data import NORMALIZATIONS, ImageDataset, Preprocess, find_images, load_image  # noqa: E402
from dinov2 import load_dinov2  # noqa: E402
from finer_cam.models import Classifier, load_head  # noqa: E402

MODES = [(0.0, [1]), (0.6, [1, 2, 3]), (1.0, [1])]  # baseline, finer, compare


def main() -> None:
    peer, model_path, head_path, image_dir, out_dir, batch = sys.argv[1:7]
    device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
    workers = int(sys.argv[8]) if len(sys.argv) > 8 else 0
    torch.set_grad_enabled(True)
    # plain PyTorch modules, as a user of these libraries builds them (no finer_cam.kernels)
    model = Classifier(load_dinov2(model_path), load_head(head_path)).to(device).eval()
    pre = Preprocess(*NORMALIZATIONS["imagenet"])
    paths = find_images(image_dir).paths
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if peer == "official":
        official(model, pre, paths, out, int(batch), device)
    else:
        torchcam_way(model, pre, paths, out, int(batch), device, workers)


def official(model, pre, paths, out, _batch, device) -> None:
    from pytorch_grad_cam import FinerCAM

    def reshape(t):
        return t[:, model.num_prefix_tokens:].reshape(t.shape[0], 16, 16, -1).permute(0, 3, 1, 2)

    cam = FinerCAM(model, [model.backbone.blocks[-1].norm1], reshape_transform=reshape)
    for path in paths:
        x = pre(load_image(path))[None].to(device)
        maps = [cam(x, alpha=alpha, comparison_categories=cats)[0] for alpha, cats in MODES]
        np.save(out / (path.stem + ".npy"), np.stack(maps).astype(np.float16))


def torchcam_way(model, pre, paths, out, batch, device, workers=0) -> None:
    from torchcam.methods import FinerCAM

    class GridModel(torch.nn.Module):  # torchcam hooks a [B, D, h, w] map: expose the patch grid as a module
        def __init__(self):
            super().__init__()
            self.grid = torch.nn.Identity()

        def forward(self, x):
            bb, p = model.backbone, model.num_prefix_tokens
            tokens = bb.prepare_tokens(x)
            for block in bb.blocks[:-1]:
                tokens = block(tokens)
            last = bb.blocks[-1]
            act = last.norm1(tokens)
            g = self.grid(act[:, p:].reshape(x.shape[0], 16, 16, -1).permute(0, 3, 1, 2))
            act = torch.cat([act[:, :p], g.flatten(2).transpose(1, 2)], dim=1)
            return model.forward_from_target(tokens, act)

    net = GridModel()
    extractor = FinerCAM(net, "grid")
    loader = torch.utils.data.DataLoader(ImageDataset(paths, pre), batch_size=batch, num_workers=workers,
                                         collate_fn=lambda items: items, pin_memory=device.startswith("cuda"))
    for i, items in zip(range(0, len(paths), batch), loader):
        chunk = paths[i: i + batch]
        x = torch.stack([item["image"] for item in items]).to(device, non_blocking=True)
        scores = net(x)  # one forward per batch
        maps = []
        for k, (alpha, cats) in enumerate(MODES):  # then one autograd pass per mode
            extractor.gamma, extractor.num_references = alpha, len(cats)
            maps.append(extractor(scores.argmax(1).tolist(), scores, retain_graph=k < len(MODES) - 1)[0])
        maps = torch.nn.functional.interpolate(torch.stack(maps, 1), size=(224, 224), mode="bilinear")
        for p, m in zip(chunk, maps):
            np.save(out / (p.stem + ".npy"), m.detach().cpu().numpy().astype(np.float16))


if __name__ == "__main__":
    main()
