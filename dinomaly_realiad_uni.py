"""Dinomaly on Real-IAD, multi-class: one model for all 30 categories.

    python dinomaly_realiad_uni.py --data_path ../Real-IAD

Edit the settings below, or override any of them on the command line (--help).
"""
from dataset import REALIAD_CLASSES
from engine.cli import main
from recipes.dinomaly import Config

config = Config(
    # data
    dataset="realiad",                        # realiad_1024/<category>/ + realiad_jsons/realiad_jsons/<category>.json
    data_path="../Real-IAD",                  # the reference's default location
    classes=tuple(REALIAD_CLASSES),           # all 30, in the paper's order (it fixes the training-set order)
    image_size=448,                           # resize side, as the reference
    crop_size=392,                            # centre crop: 28 × 28 patches of 14 px
    num_workers=4,                            # data-loading processes, as the reference
    # model
    encoder="dinov2reg_vit_base_14",          # DINOv2-R ViT-B/14, the paper's main model
    encoder_weights="official",               # pretrained DINOv2 weights, downloaded once
    dropout=0.4,                              # stronger noisy bottleneck for this larger, harder set
    # optimisation
    separate=False,                           # one model for every category (multi-class setting)
    total_iters=50_000,                       # the paper's schedule (released weights: 100k)
    batch_size=16,                            # shuffled, last partial batch dropped
    lr=2e-3,                                  # peak learning rate, after warm-up
    final_lr=2e-4,                            # end of the cosine decay
    warmup_iters=100,                         # linear warm-up from 0
    weight_decay=1e-4,                        # decoupled (StableAdamW)
    eps=1e-10,                                # StableAdamW eps of the multi-class scripts
    clip_grad=0.1,                            # global gradient-norm clip
    seed=1,                                   # torch, numpy and random
    cudnn_benchmark=True,                     # the reference's Real-IAD run uses cuDNN benchmark mode
    # evaluation and output
    eval_every=50_000,                        # evaluate and save once, at the end
    save_dir="./saved_results",
    save_name="dinomaly_realiad_uni",
)

if __name__ == "__main__":
    main(config)
