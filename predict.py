"""Run a trained Dinomaly model on new images: anomaly scores, OK/NG decisions, heatmaps.

    python predict.py --checkpoint saved_results/dinomaly_mvtec_uni --images new_photos/ --out predictions/
    python predict.py --checkpoint RUN --class bottle --images 'line3/*.png' --out out/ --save_maps
    python predict.py --checkpoint RUN --images new/ --out out/ --calibrate known_good/ --quantile 0.99
    python predict.py --onnx model.onnx --images new/ --out out/          # ONNX Runtime (export.py)
    python predict.py --onnx model.onnx --runtime openvino --images new/ --out out/
    python predict.py --openvino model.xml --images new/ --out out/       # OpenVINO, fp32 or int8

Writes DIR/predictions.csv (image,score,threshold,anomalous[,class]); see --help and the README.
"""
from engine.predict_command import main

if __name__ == "__main__":
    main()
