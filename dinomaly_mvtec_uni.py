"""Dinomaly on MVTec AD, multi-class: one model for all 15 classes.

    python dinomaly_mvtec_uni.py --data_path ../mvtec_anomaly_detection
    python dinomaly_mvtec_uni.py --demo    # generated data, a few minutes on a CPU (see --help)

Edit the settings below, or override any of them on the command line (--help).
"""
from dataset import MVTEC_CLASSES
from engine.cli import main
from recipes.dinomaly import Config

config = Config(
    # data
    dataset="mvtec",                          # MVTec layout: <class>/train/good, test/<defect>, ground_truth/<defect>
    data_path="../mvtec_anomaly_detection",   # the reference's default location
    classes=tuple(MVTEC_CLASSES),             # all 15, in the paper's order (it fixes the training-set order)
    image_size=448,                           # resize side, as the reference
    crop_size=392,                            # centre crop: 28 × 28 patches of 14 px
    num_workers=4,                            # data-loading processes, as the reference
    # model
    encoder="dinov2reg_vit_base_14",          # DINOv2-R ViT-B/14, the paper's main model
    encoder_weights="official",               # pretrained DINOv2 weights, downloaded once
    dropout=0.2,                              # noisy bottleneck (paper §3.2)
    # optimisation
    separate=False,                           # one model for every class (multi-class setting)
    total_iters=10_000,                       # the paper's schedule (released weights: 20k)
    batch_size=16,                            # shuffled, last partial batch dropped
    lr=2e-3,                                  # peak learning rate, after warm-up
    final_lr=2e-4,                            # end of the cosine decay
    warmup_iters=100,                         # linear warm-up from 0
    weight_decay=1e-4,                        # decoupled (StableAdamW)
    eps=1e-10,                                # StableAdamW eps of the multi-class scripts
    clip_grad=0.1,                            # global gradient-norm clip
    seed=1,                                   # torch, numpy and random
    # evaluation and output
    eval_every=5_000,                         # evaluate and save twice, as the reference
    save_dir="./saved_results",
    save_name="dinomaly_mvtec_uni",
)

if __name__ == "__main__":
    main(config)
