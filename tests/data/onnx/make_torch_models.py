"""Writes the PyTorch-exported models tests/test_onnx_import.py imports: an MLP and a LeNet on
[N, 1, 8, 8] images, exported by torch.onnx.export (the TorchScript exporter, opset 17) with a
dynamic batch axis, so the graphs hold the Shape -> Gather -> Unsqueeze -> Concat -> Reshape
chains of `x.view(x.size(0), -1)`; and PyTorch's outputs on two batches (1 and 5 rows), which
the test compares with flowml's.

    python tests/data/onnx/make_torch_models.py      # torch 2.13 (CPU)
"""

import os

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        return torch.log_softmax(self.fc2(torch.relu(self.fc1(x))), dim=1)


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 16, 3)
        self.fc1, self.fc2 = nn.Linear(16 * 2 * 2, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)   # [N, 6, 4, 4]
        x = nn.functional.max_pool2d(torch.tanh(self.conv2(x)), 1)   # [N, 16, 2, 2]
        x = x.view(x.size(0), -1)
        return self.fc2(nn.functional.gelu(self.fc1(x)))


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    for name, net in (("torch_mlp", MLP()), ("torch_lenet", LeNet())):
        net.eval()
        path = os.path.join(HERE, f"{name}.onnx")
        torch.onnx.export(net, (torch.zeros(2, 1, 8, 8),), path, input_names=["images"], output_names=["scores"],
                          dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        data = {}
        for n in (1, 5):
            x = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
            with torch.no_grad():
                data[f"x{n}"], data[f"y{n}"] = x, net(torch.from_numpy(x)).numpy()
        np.savez(os.path.join(HERE, f"{name}.npz"), **data)
        print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
