"""Shipped models (package data): load_anomaly.onnx, made by scripts/train_anomaly.py."""
