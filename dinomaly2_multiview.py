"""Dinomaly2 on multi-view objects, multi-class: one model for all classes, trained on single
views, judged per view and per object (the preview code's dinomaly_multiview.py). The dataset
follows the path as the preview chooses it: MANTA in the path → MANTA-Tiny, Variety →
Real-IAD Variety, else Real-IAD (see README: Dinomaly2, multi-view).

    python dinomaly2_multiview.py --data_path ../Real-IAD_Variety
    python dinomaly2_multiview.py --data_path ../MANTA-Tiny
    python dinomaly2_multiview.py --data_path ../Real-IAD --image_size 448 --crop_size 392

Edit the settings below, or override any of them on the command line (--help).
"""
from engine.cli import main
from recipes.dinomaly2_multiview import Config

config = Config(
    # data
    dataset="auto",                           # MANTA → manta, Variety → realiad_variety, else realiad_multiview (the preview's rule)
    data_path="../Real-IAD_Variety",          # the preview's default
    image_size=280,                           # resize side, as the preview (its README: 448/392 for Real-IAD)
    crop_size=280,                            # no crop: 20 × 20 patches of 14 px, as the preview
    num_workers=4,                            # data-loading processes, as the preview (MANTA's view draw: its 4 streams whatever this is)
    # model
    encoder="dinov2reg_vit_base_14",          # ViT-B, as the preview's multi-view script
    encoder_weights="official",               # pretrained DINOv2-R weights, downloaded once
    dropout=0.4,                              # after each bottleneck layer, as the preview
    la=1,                                     # linear attention in the decoder, as the preview
    lc=2,                                     # two fusion groups of 4 layers, as the preview
    cr=1,                                     # context-aware recentering of the targets, as the preview
    attn_eps=1e-8,                            # linear attention's denominator guard, as every preview script
    # loss
    ll=1,                                     # hard mining, as the preview (fixed there)
    ll_ratio=0.9,                             # hard-mining share reached after 1000 iterations, as the preview
    ll_factor=0.1,                            # gradient of the easy points, as the preview
    # optimisation
    separate=False,                           # one model for every class (the preview's only setting)
    total_iters=100_000,                      # the preview's schedule
    batch_size=16,                            # single views, shuffled, last partial batch dropped, as the preview
    lr=2e-3,                                  # bottleneck and decoder, after warm-up, as the preview
    lr_groups=2,                              # two parameter groups: bottleneck, decoder, as the preview's multi-view script
    lr_decay_ratio=1.0,                       # constant lr after warm-up, as the preview
    warmup_iters=100,                         # linear warm-up from 0, as the preview
    weight_decay=1e-4,                        # decoupled (StableAdamW), as the preview
    eps=1e-10,                                # StableAdamW eps, as the preview
    amsgrad=False,                            # off, as the preview
    clip_grad=0.1,                            # global gradient-norm clip, as the preview
    seed=1,                                   # torch, numpy and random, as the preview
    # evaluation and output
    eval_every=50_000,                        # evaluate and save twice, as the preview
    eval_batch_size=4,                        # objects of five views per evaluation batch, as the preview
    max_ratio=0.01,                           # view score: mean of the top 1 % of its map, as the preview
    max_ratio_object=0.01,                    # object score: mean of the top 1 % of all its views' pixels, as the preview
    use_max_view=False,                       # (True: the object's highest view score)
    pixel_metrics="histogram",                # ADEval's histogram pixel metrics, as the preview (exact: every pixel ranked)
    save_dir="./saved_results",
    save_name="dinomaly2_multiview",          # model.pth saved, as the preview
)

if __name__ == "__main__":
    main(config)
