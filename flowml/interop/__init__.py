"""Exchange formats: ONNX export (`onnx_export`) and import (`onnx_import`). Each module imports its format's package
lazily, so `import flowml` loads none of them."""
