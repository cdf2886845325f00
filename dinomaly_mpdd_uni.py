"""Dinomaly on MPDD (metal parts, the MVTec AD layout), multi-class: one model for all 6
classes, with the MVTec multi-class settings. The reference has no such script (only the
class-separated dinomaly_mpdd_sep.py): this is the same recipe in the multi-class setting.

    python dinomaly_mpdd_uni.py --data_path ../mpdd

Edit the settings below, or override any of them on the command line (--help).
"""
from dataset import MPDD_CLASSES
from engine.cli import main
from recipes.dinomaly import Config

config = Config(
    # data
    dataset="mpdd",                           # MVTec layout: <class>/train/good, test/<defect>, ground_truth/<defect>
    data_path="../mpdd",                      # the MPDD archive unpacked beside this folder
    classes=tuple(MPDD_CLASSES),              # all 6, in the reference's order (it fixes the training-set order)
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
    save_name="dinomaly_mpdd_uni",
)

if __name__ == "__main__":
    main(config)
