"""Dinomaly2 on RGB + depth, multi-class: one model for the ten MVTec 3D-AD classes, each
image's depth rendered as a heat map beside its RGB (the preview code's dinomaly_mvtec3d.py).
Prepare the data first: python prepare_data/prepare_mvtec3d.py --data-folder ../mvtec_3d_anomaly_detection --save-folder ../mvtec_3d

    python dinomaly2_mvtec3d.py --data_path ../mvtec_3d
    python dinomaly2_mvtec3d.py --data_path ../mvtec_3d --image_size 448 --crop_size 392   # the preview's README

Edit the settings below, or override any of them on the command line (--help).
"""
from engine.cli import main
from recipes.dinomaly2_mvtec3d import Config

config = Config(
    # data
    dataset="mvtec3d",                        # MVTec 3D-AD after prepare_data/prepare_mvtec3d.py
    data_path="../mvtec_3d",                  # the preview's default
    image_size=392,                           # resize side, as the preview's script (its README: 448)
    crop_size=392,                            # centre crop: 28 × 28 patches of 14 px, as the preview
    num_workers=4,                            # data-loading processes, as the preview
    # model
    encoder="dinov2reg_vit_base_14",          # ViT-B, as the preview's 3D script
    encoder_weights="official",               # pretrained DINOv2-R weights, downloaded once
    dropout=0.4,                              # after each bottleneck layer, as the preview
    la=1,                                     # linear attention in the decoder, as the preview
    lc=2,                                     # two fusion groups of 4 layers, as the preview
    cr=1,                                     # targets: patches − cls, layer normalised, as the preview (always there)
    rgb_ratio=0.5,                            # encoder layers averaged RGB/depth 0.5/0.5, as the preview
    attn_eps=1e-8,                            # linear attention's denominator guard, as every preview script
    # loss
    ll=1,                                     # hard mining, as the preview (always there)
    ll_ratio=0.9,                             # hard-mining share reached after 1000 iterations, as the preview
    ll_factor=0.1,                            # gradient of the easy points, as the preview
    # optimisation
    separate=False,                           # one model for every class (the preview's only setting)
    total_iters=40_000,                       # the preview's schedule
    batch_size=16,                            # 16 RGB + depth pairs (32 images through the encoder), as the preview
    lr=2e-3,                                  # bottleneck and decoder, after warm-up, as the preview
    lr_groups=2,                              # two parameter groups: bottleneck, decoder, as the preview's 3D script
    lr_decay_ratio=1.0,                       # constant lr after warm-up, as the preview
    warmup_iters=100,                         # linear warm-up from 0, as the preview
    weight_decay=1e-4,                        # decoupled (StableAdamW), as the preview
    eps=1e-10,                                # StableAdamW eps, as the preview
    amsgrad=False,                            # off, as the preview
    clip_grad=0.1,                            # global gradient-norm clip, as the preview
    seed=1,                                   # torch, numpy and random, as the preview
    # evaluation and output
    eval_every=5_000,                         # evaluate and save 8 times, as the preview
    max_ratio=0.01,                           # image score: mean of the top 1 % of the map, as the preview
    save_dir="./saved_results",
    save_name="dinomaly2_mvtec3d",            # model.pth saved, as the preview
)

if __name__ == "__main__":
    main(config)
