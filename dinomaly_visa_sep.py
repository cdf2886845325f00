"""Dinomaly on VisA, class-separated: a fresh model per class.

    python prepare_data/prepare_visa.py --split-type 1cls --data-folder ../VisA --save-folder ../VisA_pytorch
    python dinomaly_visa_sep.py --data_path ../VisA_pytorch/1cls

Each class is trained from the same seed; the run ends with every class's line and the mean.
Edit the settings below, or override any of them on the command line (--help).
"""
from dataset import VISA_CLASSES
from engine.cli import main
from recipes.dinomaly import Config

config = Config(
    # data
    dataset="visa",                           # prepared VisA (MVTec layout, prepare_data/prepare_visa.py)
    data_path="../VisA_pytorch/1cls",         # the reference's default location
    classes=tuple(VISA_CLASSES),              # all 12, one model each, in the paper's order
    image_size=448,                           # resize side, as the reference
    crop_size=392,                            # centre crop: 28 × 28 patches of 14 px
    num_workers=4,                            # data-loading processes, as the reference
    # model
    encoder="dinov2reg_vit_base_14",          # DINOv2-R ViT-B/14, the paper's main model
    encoder_weights="official",               # pretrained DINOv2 weights, downloaded once
    dropout=0.2,                              # noisy bottleneck (paper §3.2)
    # optimisation
    separate=True,                            # one model per class (class-separated setting)
    total_iters=5_000,                        # per class
    batch_size=16,                            # shuffled, last partial batch dropped
    lr=2e-3,                                  # peak learning rate, after warm-up
    final_lr=2e-4,                            # end of the cosine decay
    warmup_iters=100,                         # linear warm-up from 0
    weight_decay=1e-4,                        # decoupled (StableAdamW)
    eps=1e-8,                                 # StableAdamW eps of the MVTec/VisA class-separated scripts
    clip_grad=0.1,                            # global gradient-norm clip
    seed=1,                                   # re-seeded before each class
    # evaluation and output
    eval_every=5_000,                         # once per class, at the end
    save_dir="./saved_results",
    save_name="dinomaly_visa_sep",            # <class>/model.pth inside
)

if __name__ == "__main__":
    main(config)
