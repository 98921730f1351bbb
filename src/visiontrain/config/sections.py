"""The config sections: every key with its type, default, flag, help and allowed values — declared once here.

``visiontrain train --help``, the flat YAML names, the checks and the knob table in docs/training.md are made
from these declarations (:mod:`visiontrain.config.knobs`). A flag defaults to the field's name with dashes
(``clip_grad_norm`` → ``--clip-grad-norm``); the flag's name with underscores is also its flat YAML name.
``peers`` are what Ultralytics, timm's train.py, fastai and Lightning call the key: typed as a flag or as
``name=value``, they get a one-line answer naming the key's flag (``--imgsz`` → ``--image-size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from visiontrain import limits
from visiontrain.config.knobs import knob


@dataclass(frozen=True)
class DataConfig:
    name: str = knob("mnist", "dataset name (mnist, cifar10, …; see `visiontrain datasets`), a folder with one "
                     "sub-folder per class, a .csv/.jsonl manifest, hf:NAME_OR_PATH[:config] for a Hugging Face "
                     "dataset, or module:Class for your own Dataset",
                     flag="--data", hparam=True, metavar="SOURCE", peers=("dataset",))
    dir: str = knob("data", "where registered datasets (mnist, cifar10, …) are cached / downloaded; your own "
                    "folder of class folders goes to --data", flag="--data-dir")
    batch_size: int = knob(128, "images per training step", low=1, high=2**24, hparam=True, peers=("b", "batch", "bs"))
    eval_batch_size: int = knob(1000, "images per evaluation step (no gradients, so larger is fine)",
                                low=1, high=2**24)
    workers: int = knob(0, f"DataLoader worker processes for file datasets (0 = in the main process); more than "
                        f"{limits.WORKERS_PER_CORE} per CPU core are capped to that, with a note",
                        low=0, high=limits.MAX_WORKERS, peers=("j", "num_workers"))
    val_split: float = knob(0.1, "fraction of train held out (stratified, seeded) when the data has no val split",
                            low=0, high=1, high_open=True)
    image_size: int | None = knob(None, "square input side in pixels [default: the model's or the data's own]",
                                  low=8, high=limits.MAX_IMAGE_SIZE, metavar="PX",
                                  peers=("imgsz", "img_size", "img", "input_size"))
    args: dict[str, Any] = knob(help="a dataset argument KEY=VALUE (repeatable), e.g. --data-arg root=data/train",
                                factory=dict, flag="--data-arg", flat=("data_args",))
    transforms: dict[str, Any] = knob(
        help="transforms per split, KEY=VALUE (repeatable): train=PRESET (none, digits, cifar, photos, strong) or a "
        "list of specs, eval=[specs] (docs/data.md) [default: the data's own]", factory=dict,
        shortcuts=(("--augment", "train", "training augmentation preset: none, digits, cifar, photos, strong "
                    "[default: the data's own]"),))
    normalize: Literal["auto", "dataset", "imagenet", "none"] = knob(
        "auto", "normalization statistics: auto (the data's, or the pretrained weights'), dataset (computed), "
        "imagenet, none ([0, 1] only)")
    bad_images: Literal["error", "skip"] = knob(
        "error", "an unreadable image: error stops before training, naming the file; skip trains on the rest and "
        "lists them in bad_images.txt")
    max_pixels: int = knob(64 * 2**20, "refuse images declaring more pixels (decompression bombs)", low=1)
    download: bool = knob(True, "download a registered dataset whose files are missing in --data-dir")
    cache: Literal["auto", "memory", "off"] = knob(
        "auto", "decode an image folder once into memory (uint8) and train from there: auto (when it fits "
        "--cache-mb and pays back in the planned epochs), memory, off")
    decode: Literal["auto", "cpu", "gpu"] = knob(
        "auto", "where streamed training JPEGs are decoded: cpu (per image, in the workers), gpu (per batch, on the "
        "training device with torchvision's decode_jpeg: nvJPEG on CUDA; workers only read the files), auto (gpu "
        "when training on CUDA and torchvision can decode there)")
    cache_mb: int = knob(2048, "the in-memory budget of --cache auto, in MiB", low=0)
    split_file: str | None = knob(None, "reuse the train/val split of an earlier run (its split.json)")
    item_timeout_s: float = knob(300.0, "seconds one file/item may take to read before it counts as bad "
                                 "(0 = no limit)", flag="--item-timeout", low=0, high=604_800)
    follow_symlinks: bool = knob(False, "follow folder symlinks in a data folder, never out of it, in a loop or into "
                                 "another class's folder; file symlinks inside it are always used")


@dataclass(frozen=True)
class ModelConfig:
    name: str = knob("small_cnn", "model name (see `visiontrain models`) or any torchvision classifier, or "
                     "timm/<name> with the timm extra, or my_model.py:MyNet / mypkg.models:MyNet for your own "
                     "nn.Module class", flag="--model", hparam=True, metavar="MODEL", peers=("arch", "a"))
    args: dict[str, Any] = knob(help="a model builder argument KEY=VALUE (repeatable), e.g. --model-arg dropout=0.3",
                                factory=dict, flag="--model-arg", flat=("model_args",))
    pretrained: str | None = knob(None, "start from pretrained weights, downloaded into the standard caches when "
                                  "missing: alone = the model's default weights (torchvision's DEFAULT, timm's "
                                  "pretrained_cfg), a weights name (IMAGENET1K_V1; a timm tag such as a1_in1k), "
                                  "hf-hub:ORG/NAME, an https URL, or a .safetensors/.pth file or run",
                                  peers=("weights",), const="DEFAULT", metavar="WEIGHTS")
    pretrained_check_hash: bool = knob(True, "check a torch hub cache file named by --pretrained DEFAULT/IMAGENET1K_V1 "
                                       "against the SHA-256 prefix in its file name, as torch.hub does (off: only for "
                                       "weights you saved there under that name yourself)")
    offline: bool = knob(False, "never download pretrained weights: use the caches only (HF_HUB_OFFLINE=1 does "
                         "the same); a missing file is one line saying where to put it")
    head: list[int] | None = knob(None, "hidden widths of a new classification head, e.g. --head 128: "
                                  "features → 128 → classes", low=1, high=limits.MAX_HEAD_WIDTH)
    in_channels: int | None = knob(None, "channels the model reads: 1 adapts an RGB stem to gray "
                                   "[default: the model's own]", low=1, high=3)
    freeze: list[str] = knob(help="freeze parameters matching these globs, e.g. 'features.*'", factory=list)
    freeze_backbone: bool = knob(False, "train only the classification head")
    unfreeze_at: int | None = knob(None, "unfreeze the frozen layers from this epoch (1-based) on")
    backbone_lr_scale: float = knob(1.0, "learning-rate multiplier for everything but the head")
    init_from: str | None = knob(None, "partially initialise from a .safetensors/.pth file or a run; prints and "
                                 "saves a report (init_report.json)")
    init_match: Literal["name", "order"] = knob("name", "how --init-from pairs tensors: by name or by order")
    rename: list[str] = knob(help="--init-from key renames OLD=NEW (prefix) or re:PATTERN=REPL", factory=list)
    strict: bool = knob(False, "--init-from must fill every tensor and use every tensor of the file")
    trust_pickle: bool = knob(False, "let --pretrained/--init-from unpickle a whole-model .pth (torch.save(model)); "
                              "this runs code from the file: only for files you made yourself")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = knob("adam", "the optimizer", flag="--optimizer",
                                                            hparam=True, peers=("opt",))
    lr: float = knob(0.003, "(peak) learning rate", low=0, low_open=True, hparam=True,
                     peers=("lr0", "learning_rate"))
    weight_decay: float = knob(0.0, "weight decay on weights (never biases or norm layers)", low=0, hparam=True,
                               peers=("wd",))
    momentum: float = knob(0.9, "SGD/RMSprop momentum", low=0)
    nesterov: bool = knob(False, "Nesterov momentum for SGD")
    schedule: Literal["none", "step", "multistep", "cosine", "onecycle", "plateau"] = knob(
        "onecycle", "learning-rate schedule (step: --step-size, --gamma; multistep: --milestones; plateau: "
        "--plateau-patience, --gamma)", hparam=True, peers=("sched", "lr_scheduler", "scheduler"))
    warmup_epochs: float = knob(0.0, "linear learning-rate warm-up in front of the schedule, in epochs (fractions "
                                "allowed)", low=0)
    step_size: int = knob(1, "epochs between decays (schedule step)", low=1)
    milestones: list[int] = knob(help="epochs at which to decay (schedule multistep)", factory=list, low=1)
    gamma: float = knob(0.1, "decay factor (step, multistep, plateau)", low=0, high=1, low_open=True)
    plateau_patience: int = knob(2, "epochs without improvement before plateau decays", low=0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = knob(2, "passes over the training set", low=1, high=limits.MAX_EPOCHS, hparam=True,
                       peers=("max_epochs", "epoch"))
    device: str = knob("auto", "auto (cuda → mps → cpu), cpu, cuda, cuda:N or mps",
                       pattern=r"auto|cpu|mps|cuda(:\d{1,3})?", pattern_help="use auto, cpu, cuda, cuda:N or mps")
    seed: int = knob(0, "random seed for weights, split and shuffling", low=0, high=limits.MAX_SEED, hparam=True)
    deterministic: bool = knob(False, "use deterministic algorithms (bit-identical reruns on the GPU too)")
    log_every: int = knob(100, "log the training loss every N steps", low=1)
    threads: int | Literal["auto", "torch"] | None = knob(
        "auto", "CPU threads for torch: N, auto (the cores this process may use — affinity, cgroup quota — less "
        "those other processes keep busy; OpenMP then waits passively on a shared host) or torch (torch's own "
        "choice, as before; null in older configs)", low=1, high=limits.MAX_THREADS, metavar="N|auto|torch")
    loss: str = knob("auto", "auto (cross_entropy for classes, bce for multi-label, mse for values), cross_entropy, "
                     "bce (multi-label: sigmoid + binary cross-entropy per label), asl (multi-label: asymmetric loss "
                     "for long-tailed tags), mse, l1, smooth_l1, or one you added to "
                     "visiontrain.engine.losses.LOSSES")
    label_smoothing: float = knob(0.0, "cross-entropy label smoothing", low=0, high=1, high_open=True,
                                  peers=("smoothing",))
    class_weights: str | list[float] | None = knob(None, "'auto' weighs classes by inverse frequency; or one weight "
                                                   "per class")
    pos_weight: str | list[float] | None = knob(None, "multi-label bce: 'auto' weighs each label's positives by "
                                                "its negatives/positives in train; or one weight per label")
    thresholds: Literal["per_label", "global", "fixed"] = knob(
        "per_label", "multi-label decision thresholds, tuned on the val split for the best F1: one per label, one "
        "global, or fixed at 0.5; saved in the checkpoint and used by predict, serve and exports")
    precision: Literal["32", "bf16", "fp16", "auto"] = knob(
        "32", "32, bf16 or fp16 mixed precision (fp16 adds a GradScaler), or auto: bf16 where the GPU or CPU "
        "computes in it natively, else 32", hparam=True, peers=("amp",))
    channels_last: bool = knob(True, "NHWC memory format (faster convolutions on CPUs and tensor cores)")
    compile: bool = knob(False, "torch.compile the model")
    accumulate: int = knob(1, "batches per optimizer step (gradient accumulation)", low=1,
                           peers=("accumulate_grad_batches", "grad_accum_steps"))
    clip_grad_norm: float | None = knob(None, "clip the global gradient norm to this value", low=0, low_open=True,
                                        peers=("clip_grad", "gradient_clip_val"))
    ema_decay: float | None = knob(None, "keep an EMA of the weights with this decay (e.g. 0.999)", low=0, high=1,
                                   low_open=True, high_open=True, peers=("model_ema_decay",))
    mixup_alpha: float = knob(0.0, "MixUp strength (0 = off)", flag="--mixup", low=0)
    cutmix_alpha: float = knob(0.0, "CutMix strength (0 = off)", flag="--cutmix", low=0)
    monitor: str = knob("auto", "metric that picks the best checkpoint, e.g. val/loss [default: val/accuracy, "
                        "val/map for multi-label, val/loss for regression; with no val split the last epoch is kept]")
    early_stop_patience: int | None = knob(None, "stop after N epochs without improvement of --monitor",
                                           flag="--early-stop", low=1, peers=("patience",))
    keep_last: int = knob(0, "also keep the last N per-epoch checkpoints (epoch-0003.*)", low=0)
    checkpoint_every: int = knob(0, "also checkpoint (for resume) every N optimizer steps; 0 = per epoch only", low=0)
    plots: bool = knob(True, "draw pictures (a training batch, confusion matrix, mistakes, curves, the model graph) "
                       "into TensorBoard and plots/")
    batch_size_per_device: int | None = knob(None, "with several processes (torchrun): images per process per step; "
                                             "the global batch is this x processes", low=1)
    scale_lr: bool = knob(False, "with several processes: multiply --lr by the process count")
    sync_bn: bool = knob(False, "with several processes: BatchNorm statistics over the global batch")
    track: list[str] = knob(help="send the run to an experiment tracker too: mlflow (params, every TensorBoard "
                            "scalar, tags, and the best checkpoint, plots and evaluation report as artifacts; "
                            "docs/experiments.md)", factory=list, pattern="mlflow",
                            pattern_help="the trackers visiontrain knows: mlflow")
    track_uri: str | None = knob(None, "the tracker's store: an MLflow tracking URI (http://host:5000, "
                                 "sqlite:///mlflow.db, …) [default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/"
                                 "mlflow.db]", metavar="URI")
    track_experiment: str = knob("visiontrain", "the tracker's experiment that groups the runs", metavar="NAME")
    dist_timeout_s: float = knob(600.0, "with several processes: a rank that stops answering for this many "
                                 "seconds ends the job (no hang)", flag="--dist-timeout", low=0, low_open=True)
