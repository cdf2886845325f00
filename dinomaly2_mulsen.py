"""Dinomaly2 on RGB + infrared, multi-class: one model for the 15 MulSen-AD classes and both
modalities, each sample judged from the sum of its RGB and infrared scores (the preview
code's dinomaly_mulsen.py).

    python dinomaly2_mulsen.py --data_path ../MulSen_AD

Edit the settings below, or override any of them on the command line (--help).
"""
from engine.cli import main
from recipes.dinomaly2_mulsen import Config

config = Config(
    # data
    dataset="mulsen",                         # MulSen-AD: <class>/{RGB,Infrared,Pointcloud}/…
    data_path="../MulSen_AD",                 # the preview's default
    image_size=448,                           # resize side, as the preview
    crop_size=392,                            # centre crop: 28 × 28 patches of 14 px, as the preview
    num_workers=4,                            # data-loading processes, as the preview
    # model
    encoder="dinov2reg_vit_large_14",         # ViT-L (layers 4, 6, …, 18), as the preview's MulSen script
    encoder_weights="official",               # pretrained DINOv2-R weights, downloaded once
    dropout=0.2,                              # after each bottleneck layer, as the preview's MulSen script
    la=1,                                     # linear attention in the decoder, as the preview
    lc=2,                                     # two fusion groups of 4 layers, as the preview
    cr=1,                                     # context-aware recentering of the targets, as the preview
    attn_eps=1e-8,                            # linear attention's denominator guard, as every preview script
    # loss
    ll=1,                                     # hard mining, as the preview
    ll_ratio=0.9,                             # hard-mining share reached after 1000 iterations, as the preview
    ll_factor=0.1,                            # gradient of the easy points, as the preview
    # optimisation
    separate=False,                           # one model for every class (the preview's only setting)
    total_iters=20_000,                       # the preview's schedule
    batch_size=8,                             # 8 (RGB, infrared) pairs: 16 images, RGB first, as the preview
    lr=2e-3,                                  # after warm-up: bottleneck's last layers and decoder, as the preview
    first_layer_lr=2e-4,                      # the bottleneck's first layer, as the preview
    lr_groups=3,                              # three parameter groups, as the preview's MulSen script
    lr_decay_ratio=1.0,                       # constant lr after warm-up, as the preview
    warmup_iters=100,                         # linear warm-up from 0, as the preview
    weight_decay=1e-4,                        # decoupled (StableAdamW), as the preview
    eps=1e-10,                                # StableAdamW eps, as the preview
    amsgrad=False,                            # off, as the preview
    clip_grad=0.1,                            # global gradient-norm clip, as the preview
    seed=1,                                   # torch, numpy and random, as the preview
    # evaluation and output
    eval_every=5_000,                         # evaluate and save 4 times, as the preview
    max_ratio=0.01,                           # each modality's score: mean of the top 1 % of its map, as the preview
    save_dir="./saved_results",
    save_name="dinomaly2_mulsen",             # model.pth saved (the preview's MulSen script saves none)
)

if __name__ == "__main__":
    main(config)
