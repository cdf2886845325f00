"""Dinomaly2, few-shot, multi-class: one model for all classes of an MVTec-layout dataset,
trained on --shot normal images per class, drawn at random, with strong augmentation (the
preview code's dinomaly_fewshot.py). The class list comes from the path as in dinomaly2_2d.py.

    python dinomaly2_fewshot.py --data_path ../mvtec_anomaly_detection --shot 4
    python dinomaly2_fewshot.py --data_path ../VisA_pytorch/1cls --shot 8

Edit the settings below, or override any of them on the command line (--help).
"""
from engine.cli import main
from recipes.dinomaly2_fewshot import Config

config = Config(
    # data
    dataset="auto",                           # the dataset named in --data_path, else its folders (the preview's rule)
    data_path="../mvtec_anomaly_detection",   # the paper's few-shot dataset (the preview's default: ../MPDD)
    shot=4,                                   # images per class, as the preview (the paper: 4, 8 and 16)
    image_size=448,                           # resize side, as the preview
    crop_size=392,                            # random crop of about this side, resized to it, as the preview
    num_workers=4,                            # data-loading processes, as the preview (augmentation: its 4 streams whatever this is)
    # model
    encoder="dinov2reg_vit_base_14",          # ViT-B: the paper's reference model (the preview's default: ViT-S)
    encoder_weights="official",               # pretrained DINOv2-R weights, downloaded once
    dropout=0.4,                              # after each bottleneck layer, as the preview (the paper gives none)
    la=1,                                     # linear attention in the decoder, as the preview
    lc=2,                                     # two fusion groups of 4 layers, as the preview
    cr=1,                                     # context-aware recentering of the targets, as the preview and the paper
    attn_eps=1e-8,                            # linear attention's denominator guard, as every preview script
    # loss
    ll=1,                                     # hard mining, as the preview
    ll_ratio=0.9,                             # hard-mining share reached after 1000 iterations, as the preview
    ll_factor=0.1,                            # gradient of the easy points, as the preview
    # optimisation
    separate=False,                           # one model for every class (the preview's only setting)
    total_iters=40_000,                       # the preview's schedule (the paper's is not known)
    batch_size=16,                            # shuffled, last partial batch dropped, as the preview
    lr=2e-3,                                  # after warm-up: bottleneck's last layers and decoder, as the preview
    first_layer_lr=2e-4,                      # the bottleneck's first layer, as the preview
    lr_decay_ratio=1.0,                       # constant lr after warm-up, as the preview
    warmup_iters=100,                         # linear warm-up from 0, as the preview
    weight_decay=1e-4,                        # decoupled (StableAdamW), as the preview
    eps=1e-10,                                # StableAdamW eps, as the preview
    amsgrad=False,                            # off, as the preview
    clip_grad=0.1,                            # global gradient-norm clip, as the preview
    seed=1,                                   # torch, numpy and random; also the few-shot draw, as the preview
    # evaluation and output
    eval_every=2_000,                         # evaluate and save 20 times, as the preview
    max_ratio=0.01,                           # image score: mean of the top 1 % of the map, as the preview
    save_dir="./saved_results",
    save_name="dinomaly2_fewshot",            # model.pth saved (the preview's few-shot script saves none)
)

if __name__ == "__main__":
    main(config)
