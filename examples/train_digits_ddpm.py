"""Train a small diffusers DDPM on scikit-learn's 8x8 digits and save it with save_pretrained.

diffusers' own training recipe: a UNet2DModel learns to predict the noise that
DDPMScheduler.add_noise put on an image at a uniformly drawn timestep (MSE), with AdamW. The
folder it writes is an ordinary diffusers pipeline (model_index.json, unet/, scheduler/), the
kind of model a user brings to koopman-distill:

    python examples/train_digits_ddpm.py --out runs/digits-ddpm    # ~3 min on 2 CPU cores
    kdm pairs make --teacher diffusers:runs/digits-ddpm --out runs/digits-pairs \
        --n 5000 --set pairs.solver=ddim --set pairs.steps=20 --set pairs.batch_size=500

The digits (1,797 images, bundled with scikit-learn, nothing downloaded) are scaled to
[-1, 1], one channel. Seeded: the same command writes the same weights on the same machine
when nothing else runs (beside other processes it uses fewer threads, which changes the last
bits; see koopman_distill.threads).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from sklearn.datasets import load_digits
from tqdm import tqdm

from koopman_distill.threads import cpu_threads


def digits() -> torch.Tensor:
    """The 1,797 digits as (N, 1, 8, 8) float32 in [-1, 1]."""
    images = load_digits().images.astype("float32") / 16.0
    return torch.from_numpy(images).unsqueeze(1) * 2 - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to save the pipeline in")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    x = digits()
    model = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                        block_out_channels=(16, 32), norm_num_groups=8,
                        down_block_types=("DownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps)
    g = torch.Generator().manual_seed(args.seed)
    with cpu_threads(0) as threads:  # fewer threads while other processes want the cores
        for _ in tqdm(range(args.steps), desc="ddpm"):
            threads.apply()
            batch = x[torch.randint(0, len(x), (args.batch_size,), generator=g)]
            noise = torch.randn(batch.shape, generator=g)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),), generator=g)
            loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(batch, noise, t),
                                                      t).sample, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    out = Path(args.out)
    DDPMPipeline(unet=model.eval(), scheduler=scheduler).save_pretrained(out)
    print(f"saved the pipeline to {out} (last loss {loss.item():.4f})")


if __name__ == "__main__":
    main()
