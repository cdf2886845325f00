"""Export a trained Dinomaly model to ONNX: normalised image -> anomaly map and image score.

    python export.py --checkpoint saved_results/dinomaly_mvtec_uni --format onnx --out model.onnx
    python export.py --checkpoint model.pth --encoder dinov2reg_vit_base_14 --out model.onnx

The batch axis is dynamic; the input side is the run's crop. Run it with predict.py --onnx.
"""
from engine.export import main

if __name__ == "__main__":
    main()
