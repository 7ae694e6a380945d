"""SAM2-Matte: SAM 2 unchanged, sigmoid(mask logits) read as alpha, fine-tuned on MA-V with a matting loss.

The model, its prompts and its tracking are SAM 2's own training code (``training/`` of
facebookresearch/sam2, from the pinned ``sam2`` extra: ``make setup`` or
``pip install --no-deps -r requirements-sam2.lock``). This package adds what matting needs around it:

- ``config``: the published SAM 2 / 2.1 configs and checkpoint file names, the ``tiny`` CPU config;
- ``data``: MA-V (and image-sequence matting folders) -> SAM 2's ``BatchedVideoDatapoint`` with soft alpha;
- ``model``: ``SAM2Matte`` (``SAM2Train`` with prompts taken from binarised alpha), weight loading;
- ``loss``: L1 + Laplacian (+ gradient) on alpha, IoU and object-score heads in SAM 2's multi-step loss;
- ``train`` / ``predict`` / ``evaluate``: the ``python -m models.sam2_matte`` commands.
"""
