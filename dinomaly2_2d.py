"""Dinomaly2 on any dataset in the MVTec AD layout, multi-class: one model for all classes
(the preview code's dinomaly_2D.py). The class list comes from the path as the preview
chooses it: a path naming mvtec, visa, btech (BTAD), mpdd, miad or medical (Uni-Medical)
gets that dataset's list, any other path every class folder found there.

    python dinomaly2_2d.py --data_path ../mvtec_anomaly_detection
    python dinomaly2_2d.py --data_path ../VisA_pytorch/1cls
    python dinomaly2_2d.py --data_path ../BTech_Dataset_transformed --image_size 392 --crop_size 392
    python dinomaly2_2d.py --data_path ../my_parts --classes auto --separate   # one model per class

Edit the settings below, or override any of them on the command line (--help).
"""
from engine.cli import main
from recipes.dinomaly2 import Config

config = Config(
    # data
    dataset="auto",                           # the dataset named in --data_path, else its folders (the preview's rule)
    data_path="../mvtec_anomaly_detection",   # the paper's headline dataset (the preview's default: ../MPDD)
    image_size=448,                           # resize side, as the preview (its README: 392 for BTAD/MIAD, 280 for Uni-Medical)
    crop_size=392,                            # centre crop: 28 × 28 patches of 14 px, as the preview
    num_workers=4,                            # data-loading processes, as the preview
    # model
    encoder="dinov2reg_vit_base_14",          # ViT-B: the paper's reference model (the preview's default: ViT-S)
    encoder_weights="official",               # pretrained DINOv2-R weights, downloaded once
    dropout=0.4,                              # after each bottleneck layer, as the preview (the paper gives none)
    la=1,                                     # linear attention in the decoder, as the preview
    lc=2,                                     # two fusion groups of 4 layers, as the preview (and Dinomaly)
    cr=1,                                     # context-aware recentering of the targets, as the preview and the paper
    attn_eps=1e-8,                            # linear attention's denominator guard, as every preview script
    # loss
    ll=1,                                     # hard mining, as the preview (and Dinomaly)
    ll_ratio=0.9,                             # hard-mining share reached after 1000 iterations, as the preview
    ll_factor=0.1,                            # gradient of the easy points, as the preview
    # optimisation
    separate=False,                           # one model for every class (the preview's only setting)
    total_iters=40_000,                       # the preview's schedule (the paper's is not known)
    batch_size=16,                            # shuffled, last partial batch dropped, as the preview
    lr=2e-3,                                  # after warm-up: bottleneck's last layers and decoder, as the preview
    first_layer_lr=2e-4,                      # the bottleneck's first layer, as the preview (its README: for stability)
    lr_decay_ratio=1.0,                       # constant lr after warm-up, as the preview
    warmup_iters=100,                         # linear warm-up from 0, as the preview
    weight_decay=1e-4,                        # decoupled (StableAdamW), as the preview
    eps=1e-10,                                # StableAdamW eps, as the preview
    amsgrad=False,                            # off, as the preview (Dinomaly: on)
    clip_grad=0.1,                            # global gradient-norm clip, as the preview
    seed=1,                                   # torch, numpy and random, as the preview
    # evaluation and output
    eval_every=5_000,                         # evaluate and save 8 times, as the preview
    max_ratio=0.01,                           # image score: mean of the top 1 % of the map, as the preview
    save_dir="./saved_results",
    save_name="dinomaly2_2d",                 # model.pth saved (the preview's 2D script saves none)
)

if __name__ == "__main__":
    main(config)
