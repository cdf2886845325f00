"""Export a trained Dinomaly model to ONNX or OpenVINO (fp32, int8): normalised image -> anomaly map and score.

    python export.py --checkpoint saved_results/dinomaly_mvtec_uni --format onnx --out model.onnx
    python export.py --checkpoint model.pth --encoder dinov2reg_vit_base_14 --out model.onnx
    python export.py --checkpoint saved_results/dinomaly_mvtec_uni --format openvino --out model.xml
    python export.py --checkpoint saved_results/dinomaly_mvtec_uni --format openvino --int8 --out model_int8.xml

The batch axis is dynamic; the input side is the run's crop. Run it with predict.py --onnx or
--openvino. --int8 quantizes with NNCF and writes model_int8.accuracy.json (fp32 vs int8).
"""
from engine.export import main

if __name__ == "__main__":
    main()
