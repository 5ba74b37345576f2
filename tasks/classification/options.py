"""Option declarations shared by the classification commands (``classify``, ``compare``, ``evaluate``),
in the dialect of :mod:`finetune_kit.tasks.cli_options` (dashed names, underscore aliases, timm's
spellings as declared aliases). Imported by :mod:`finetune_kit.tasks.classification.cli`."""
from __future__ import annotations

from finetune_kit.tasks.cli_options import CONFIG_HELP, option

_P = "Data"
_M = "Model"
_S = "Strategy"
_O = "Optimisation"
_R = "Outputs"

# -- shared option declarations ---------------------------------------------------------
CONFIG = option(None, "config", help=CONFIG_HELP, rich_help_panel=_R)
DATA = option("synthetic", "data", "-d", "--dataset", help="Image folder (class sub-folders, or flat with "
              "--label-preset/--label-regex), a CSV of path,label[,split], or 'synthetic' (generated SYNTHETIC "
              "demo set).", rich_help_panel=_P)
LAYOUT = option("auto", "layout", help="auto|imagefolder|csv|regex.", rich_help_panel=_P)
LABEL_PRESET = option(None, "label_preset", help="File-name label rule: 'acrima' (_g_ = glaucoma).", rich_help_panel=_P)
LABEL_REGEX = option(None, "label_regex", help="Regex searched in file names; a match = the positive class.",
                     rich_help_panel=_P)
POSITIVE = option("glaucoma", "positive_class", help="File-name rule: class name of matching files (label 1).",
                  rich_help_panel=_P)
NEGATIVE = option("normal", "negative_class", help="File-name rule: class name of the other files (label 0).",
                  rich_help_panel=_P)
VAL_FRACTION = option(0.15, "val_fraction", help="Fraction held out for validation (stratified, seeded).",
                      rich_help_panel=_P)
TEST_FRACTION = option(0.2, "test_fraction", help="Fraction held out for the test report.", rich_help_panel=_P)
SPLIT_SEED = option(0, "split_seed", help="Seed of the stratified split.", rich_help_panel=_P)
EXTENSIONS = option(None, "extensions", help="Comma-separated image extensions, case-insensitive "
                    "(default jpg,jpeg,png,bmp,tif,tiff,webp).", rich_help_panel=_P)
SKIP_CORRUPT = option(False, "skip_corrupt", help="Skip unreadable images with a warning (count in "
                      "metrics.json) instead of stopping.", rich_help_panel=_P)
SYNTHETIC_SIZE = option(160, "synthetic_size", help="--data synthetic: side of the generated images, px.",
                        rich_help_panel=_P)
IMG_SIZE = option(224, "img_size", help="Network input side in pixels.", rich_help_panel=_P)
AUGMENT = option("auto", "augment", help="fundus|none|auto (auto: none for the linear probe, so its "
                 "feature cache applies; fundus otherwise).", rich_help_panel=_P)
CLAHE = option(False, "clahe", help="Add CLAHE (p=0.3) to the fundus augmentation.", rich_help_panel=_P)
MODEL_NAME = option("mobilenetv2_100", "model_name", "--model", help="timm model name (timm.list_models()).",
                    rich_help_panel=_M)
PRETRAINED = option(False, "pretrained", help="Download timm hub weights (needs network).", rich_help_panel=_M)
WEIGHTS = option(None, "custom_weights_path", help="Local weights: .pth, .pth.tar or .safetensors (state "
                 "dict or whole checkpoint; head re-initialised when its shape differs).", rich_help_panel=_M)
PARTIAL = option(False, "allow_partial_weights", help="Accept backbone key mismatches in --custom-weights-path "
                 "(report only).", rich_help_panel=_M)
DROP_RATE = option(0.0, "drop_rate", help="Dropout before the classifier head (timm drop_rate).", rich_help_panel=_M)
BN_STATS = option("auto", "bn_stats", help="BatchNorm running statistics: frozen|train|auto (auto: frozen "
                  "with pretrained/custom weights, train for random init).", rich_help_panel=_M)
STRATEGY = option("gradual", "ft_strategy", help="linear|gradual|full (alias llrd)|progressive "
                  "(`finetune-kit strategies`).", rich_help_panel=_S)
LAYER_PATTERNS = option(None, "layer_patterns", help="Layer groups from regexes instead of timm's "
                        "group_matcher: repeatable, stem first, [NAME=]REGEX matched at the start of parameter "
                        "names; a numeric capture gives one group per value ('layer=^layer(\\d)\\.'), use "
                        "(?:a|b) for alternatives; the head is added last.", rich_help_panel=_S)
LAYER_PRESET = option(None, "layer_preset", help="Named layer-group preset: vit|resnet|convnext|hpcm "
                      "(default: the model's own timm group_matcher).", rich_help_panel=_S)
GRANULARITY = option("stages", "layer_granularity", help="stages|blocks: timm group_matcher coarse "
                     "(layer4) or fine (layer4.1) groups, for LLRD depth and unfreezing.", rich_help_panel=_S)
LAYER_STAGES = option(None, "layer_stages", help="gradual/progressive stages instead of the family default: "
                      "stages by ';', group keys by ',' (e.g. 'head;layer4;layer3;re:.'); cumulative.",
                      rich_help_panel=_S)
LP_EPOCHS = option(10, "linear_probe_epochs", help="Epochs of the linear probe (--ft-strategy linear).",
                   rich_help_panel=_S)
PATIENCE = option(3, "gradual_patience", help="gradual: epochs without val improvement before the next "
                  "unfreezing stage.", rich_help_panel=_S)
LLRD = option(0.9, "llrd_decay", help="full/llrd, lp_ft, gradual: LR factor per layer group of depth (head gets 1).",
              rich_help_panel=_S)
SCHEDULE = option("2,4", "unfreeze_schedule", help="progressive: completed epochs after which stages 1,2 unfreeze (2,4: stage 1 trains from epoch 3, stage 2 from epoch 5; epochs counted from 1).",
                  rich_help_panel=_S)
UNFREEZE_WARMUP = option(2, "unfreeze_warmup_epochs", help="progressive, gradual: LR ramp of newly "
                         "unfrozen groups, epochs.", rich_help_panel=_S)
STRATEGY_KWARGS = option(None, "strategy_kwargs", metavar="NAME=VALUE", help="Option of the chosen strategy (a "
                         "plugin's too), repeatable: NAME=VALUE, VALUE read as JSON when it parses (3, 0.5, true, "
                         "[1,2]), else a string; merged over the named strategy options above.", rich_help_panel=_S)
EPOCHS = option(20, "num_epochs", "--epochs", help="Epochs for gradual/full/progressive.", rich_help_panel=_O)
LR = option(1e-3, "learning_rate", "--lr", help="Peak AdamW learning rate (per step, after warm-up).",
            rich_help_panel=_O)
HEAD_MULT = option(1.0, "head_lr_mult", help="LR multiplier of the (new) classifier head when the backbone "
                   "trains too (not for the linear probe or a probed head: lp_ft, gradual).", rich_help_panel=_O)
WD = option(0.05, "weight_decay", help="AdamW decoupled weight decay (0 for norms/biases).", rich_help_panel=_O)
WARMUP = option(1.0, "warmup_epochs", help="Linear LR warm-up, epochs (then cosine to --min-lr).",
                rich_help_panel=_O)
MIN_LR = option(1e-6, "min_lr", help="LR at the end of the cosine decay.", rich_help_panel=_O)
BATCH = option(32, "batch_size", "-b", help="Images per optimizer step.", rich_help_panel=_O)
CLIP = option(1.0, "grad_clip", help="Max global gradient L2 norm (0: off).", rich_help_panel=_O)
MIXUP = option(0.0, "mixup", help="Mixup alpha (0: off); uses soft-target cross-entropy.", rich_help_panel=_O)
CUTMIX = option(0.0, "cutmix", help="CutMix alpha (0: off).", rich_help_panel=_O)
SMOOTHING = option(0.1, "smoothing", help="Label smoothing.", rich_help_panel=_O)
AMP = option(False, "amp", help="Mixed precision (CUDA fp16/bf16; CPU bf16 only with native support, else fp32 "
             "with a notice).", rich_help_panel=_O)
AMP_DTYPE = option("auto", "amp_dtype", help="auto|bf16|fp16 with --amp (auto: bf16 where the device has it, "
                   "else fp16 with a GradScaler on CUDA).", rich_help_panel=_O)
EMA = option(False, "ema", help="Keep an EMA of the weights (timm ModelEmaV3) and evaluate it.", rich_help_panel=_O)
EMA_DECAY = option(0.998, "ema_decay", help="Decay of the --ema weights per optimizer step.", rich_help_panel=_O)
MONITOR = option("auroc", "monitor", help="Validation metric choosing the best epoch: auroc|accuracy|"
                 "balanced_accuracy|loss.", rich_help_panel=_O)
EARLY = option(0, "early_stopping_patience", help="Stop after this many epochs without val improvement "
               "(0: off).", rich_help_panel=_O)
FEATURE_CACHE = option(True, "feature_cache", negatable=True, help="Head-only epochs train on cached backbone "
                       "features (same gradients, much faster); --no-feature-cache runs the backbone every step.",
                       rich_help_panel=_O)
SEED = option(0, "seed", help="Seed of initialisation, sampling and augmentation.", rich_help_panel=_O)
DEVICE = option("auto", "device", help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N.",
                rich_help_panel=_O)
THREADS = option(None, "num_threads", "--threads", help="torch CPU threads (default: torch's).", rich_help_panel=_O)
WORKERS = option(0, "num_workers", "--workers", help="DataLoader worker processes augmenting images beside "
                 "training (0: in the main process; use several on a GPU, where augmentation is the bottleneck). "
                 "Runs with the same value repeat exactly.", rich_help_panel=_O)
OUTPUT = option("runs", "output_dir", "--output", "-o", help="Parent folder: each run gets its own folder under it.",
                rich_help_panel=_R)
TAG = option(None, "experiment_tag", help="Run-folder prefix and wandb run name (default MODEL-STRATEGY).",
             rich_help_panel=_R)
WANDB = option("offline", "wandb", help="disabled|offline|online (offline: RUN/wandb, `wandb sync` later).",
               rich_help_panel=_R)
PROJECT = option("finetune-kit", "wandb_project", help="wandb project.", rich_help_panel=_R)
PROGRESS = option(True, "progress", negatable=True, help="Rich progress bars.", rich_help_panel=_R)
STOP_AFTER = option(None, "stop_after_epoch", help="Stop after the N-th epoch (counted from 1) as if interrupted, leaving a "
                    "run that --resume continues (for tests and time-boxed jobs).", rich_help_panel=_R)
# -- issue 16: exact linear probe, cross-validation, OOD, calibration, speed ------------------
LP_SOLVER = option("lbfgs", "linear_probe_solver", help="lbfgs: the linear probe solved exactly (L-BFGS logistic "
                   "regression on cached features, L2 strength chosen on validation; no epochs or LR); epochs: "
                   "trained with AdamW for --linear-probe-epochs.", rich_help_panel=_S)
PROBE_INIT = option(None, "probe_init", negatable=True, help="Start the head from the exact linear probe (default: "
                    "lp_ft always, gradual unless --no-probe-init, the others not).", rich_help_panel=_S)
FOLDS = option(None, "folds", help="K-fold cross-validation (K >= 2, stratified; grouped with --group-regex or a CSV "
               "group column): mean, SD and bootstrap 95% CI per strategy.", rich_help_panel=_P)
GROUP_REGEX = option(None, "group_regex", help="Regex finding the patient id in each file name (first group, else "
                     "the match), e.g. '^(\\d+)_' for 1234_left.jpg: no patient spans two splits.", rich_help_panel=_P)
OOD = option(True, "ood", negatable=True, help="Fit a Mahalanobis OOD detector on penultimate features after "
             "training (RUN/ood.npz; predict/evaluate report ood_score and in_distribution).", rich_help_panel=_R)
CALIBRATION = option("auto", "calibration", help="auto (chosen on validation: none, temperature, vector or "
                     "isotonic, kept only when out-of-fold NLL improves beyond its bootstrap spread) or one of "
                     "them.", rich_help_panel=_O)
CHANNELS_LAST = option(False, "channels_last", negatable=True, help="Model and inputs in channels-last memory "
                       "format (as timm's train.py).", rich_help_panel=_O)
COMPILE = option(False, "compile", negatable=True, help="torch.compile the model (as timm's train.py --torchcompile).",
                 rich_help_panel=_O)
