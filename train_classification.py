#!/usr/bin/env python
"""Fine-tune a timm classifier on fundus images (same options as ``finetune-kit classify``).

Options are dashed (``--num-epochs``) and also accepted with underscores (``--num_epochs``, as
below); ``--config RUN/config.json`` repeats a run. Example (ACRIMA, glaucoma vs normal from file names)::

    python train_classification.py --ft_strategy gradual --data ../shared/data/acrima/images \
        --label_preset acrima --model_name mobilenetv2_100 \
        --custom_weights_path ../shared/weights/mobilenetv2_100.in1k_int8dequant.pth
"""
from finetune_kit.tasks.classification.cli import main_classify

if __name__ == "__main__":
    main_classify()
