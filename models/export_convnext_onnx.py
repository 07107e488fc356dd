#!/usr/bin/env python3
"""Export facebook/convnext-tiny-224 to ONNX (opset 17) for edgeverify, and print its sha256.

Run on a machine with internet (it downloads the checkpoint from the Hugging Face hub):

    python3 -m venv exportenv && exportenv/bin/pip install torch transformers onnx
    exportenv/bin/python models/export_convnext_onnx.py models/convnext-tiny-224.onnx

Then paste the printed sha256 into models/convnext-tiny-224.toml (`sha256 = "..."`) so that
`edgeverify verify` refuses any other file, and copy the .onnx next to the description.
"""
import hashlib
import sys

import torch
from transformers import ConvNextForImageClassification

CHECKPOINT = "facebook/convnext-tiny-224"


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "models/convnext-tiny-224.onnx"
    model = ConvNextForImageClassification.from_pretrained(CHECKPOINT).eval()
    dummy = torch.zeros(1, 3, 224, 224)

    class Logits(torch.nn.Module):
        """Returns the logits tensor alone, so the graph has one output named `logits`."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values=pixel_values).logits

    torch.onnx.export(
        Logits(model),
        (dummy,),
        out,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
    print(f"wrote {out}\nsha256 {digest}")


if __name__ == "__main__":
    main()
