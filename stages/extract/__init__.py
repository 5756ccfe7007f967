"""`skel extract`: videos → two-stage ONNX pose estimation → tracked COCO-17 triplet tables."""
