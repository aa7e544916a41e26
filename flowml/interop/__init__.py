"""Exchange formats: ONNX export (`onnx_export`). Each module imports its format's package
lazily, so `import flowml` loads none of them."""
