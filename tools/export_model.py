#!/usr/bin/env python
"""
Export a fine-tuned SAMPrompt model for use outside Detectron2.

    python tools/export_model.py --config-file projects/SAMPrompt/configs/sam_box.yaml \
        --format sam --output sam_vit_b_iwp.pth MODEL.WEIGHTS output/sam_box/model_final.pth
    python tools/export_model.py --config-file ... --format onnx --output decoder.onnx \
        [--encoder-onnx encoder.onnx] MODEL.WEIGHTS output/sam_box/model_final.pth

--format sam: the official checkpoint layout; `segment_anything.sam_model_registry["vit_b"](
checkpoint="sam_vit_b_iwp.pth")` loads it. For MODEL.SAM.TYPE custom the sizes are written to
<output>.json: `sam = sam_prompt.build_sam(**json.load(open(...)))` then
`sam.load_state_dict(torch.load(<output>))`.

--format onnx: the prompt encoder + mask decoder as segment-anything's ONNX example exports it
(inputs image_embeddings, point_coords with a padding point, point_labels, mask_input,
has_mask_input, orig_im_size), checked with onnxruntime against PyTorch (the largest absolute
logit difference is printed). --encoder-onnx also writes the image encoder.
"""

import argparse
import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "SAMPrompt")
)

from detectron2.utils.logger import setup_logger  # noqa: E402

from sam_prompt.checkpoint import CheckpointError  # noqa: E402
from sam_prompt.config import load_config  # noqa: E402
from sam_prompt.export import (  # noqa: E402
    ExportError,
    check_writable,
    export_onnx_decoder,
    export_onnx_encoder,
    export_sam_checkpoint,
    load_model,
)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--format", choices=("sam", "onnx"), required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--encoder-onnx", help="also export the image encoder to this ONNX file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    setup_logger(name="sam_prompt")
    try:
        if not os.path.isfile(args.config_file):
            raise ExportError(f"config file {args.config_file} not found")
        for path in filter(None, (args.output, args.encoder_onnx)):
            check_writable(path)
        cfg = load_config(args.config_file, args.opts + ["MODEL.DEVICE", "cpu"])
        model = load_model(cfg)
        if args.format == "sam":
            for path in export_sam_checkpoint(model, cfg, args.output):
                print(f"wrote {path}")
        else:
            diff = export_onnx_decoder(model, args.output)
            print(
                f"wrote {args.output} (onnxruntime vs PyTorch: max abs logit difference {diff:.2e})"
            )
        if args.encoder_onnx:
            diff = export_onnx_encoder(model, args.encoder_onnx)
            print(f"wrote {args.encoder_onnx} (max abs embedding difference {diff:.2e})")
    except (ExportError, CheckpointError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
