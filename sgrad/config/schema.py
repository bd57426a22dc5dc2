"""Typed schema of every sgrad setting, registered in Hydra's ConfigStore.

The YAML files under configs/ are validated against these dataclasses, so an
unknown key or a value of the wrong type fails at start-up, naming the key.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


class Parallel(enum.StrEnum):
    none = "none"
    data = "data"
    pipeline = "pipeline"


class DatasetName(enum.StrEnum):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"
    kmnist = "kmnist"
    cifar10 = "cifar10"
    idx = "idx"
    copy = "copy"
    repeat_copy = "repeat_copy"
    ptb_char = "ptb_char"
    text = "text"
    two_timescale = "two_timescale"


class ModelName(enum.StrEnum):
    fcn = "fcn"
    cnn = "cnn"
    lstm = "lstm"
    transformer = "transformer"
    custom = "custom"  # your own modules: model._target_ (sgrad.run.build.custom_modules)


class LossName(enum.StrEnum):
    cross_entropy = "cross_entropy"
    mse = "mse"
    custom = "custom"  # your own function: loss._target_ (sgrad.run.build.loss_fn)


class Partition(enum.StrEnum):
    even = "even"
    balanced = "balanced"
    profiled = "profiled"


class OptimName(enum.StrEnum):
    adam = "adam"
    sgd = "sgd"
    rls = "rls"  # sg.optim of the LSTM's linear SG model only: refit by least squares (sgrad/core/least_squares.py)


class TraceKind(enum.StrEnum):
    """How the LSTM's M learns from the gradients beyond one window (sg.trace_lambda > 0)."""
    forward = "forward"        # regress onto the λ-return over the next sg.trace_windows windows (read ahead)
    accumulate = "accumulate"  # accumulate BP(λ): per-example eligibility traces, online (Pemberton & Costa 2024)


class Schedule(enum.StrEnum):
    constant = "constant"
    piecewise = "piecewise"
    cosine = "cosine"


# The image datasets model=lstm reads as sequences, pixels_per_step at a time (sgrad/data/pixels.py).
LSTM_IMAGE_DATASETS = ("mnist", "fashion_mnist", "kmnist", "cifar10", "idx")


@dataclass
class DatasetConfig:
    name: DatasetName = DatasetName.mnist
    # Folder holding the files; None means $SGRAD_DATA/<name> or ~/.cache/sgrad/<name>.
    dir: Optional[str] = None
    download: bool = True
    num_classes: int = 10
    # ptb_char: a checksum ("sha256:<hex>") of simple-examples.tgz lets sgrad download it; url: a mirror
    checksum: Optional[str] = None
    url: Optional[str] = None
    # text: dir is a UTF-8 file or folder; the last test_fraction is test, the valid_fraction before it valid
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    # copy / repeat_copy (generated on the fly)
    bits: int = 8
    start_length: int = 1
    max_repeats: int = 5
    curriculum_threshold: float = 0.15
    # model=lstm on an image dataset (Sequential MNIST): pixels read per time step, in raster order (1: pixel by
    # pixel; 28 on MNIST: row by row)
    pixels_per_step: int = 1


@dataclass
class ModelConfig:
    name: ModelName = ModelName.fcn
    layers: int = 4
    width: int = 256
    batch_norm: bool = True
    dni_every: int = 1
    # even: a module every dni_every layers; balanced: `modules` modules of (nearly) equal estimated cost
    partition: Partition = Partition.even
    modules: Optional[int] = None
    channels: int = 128
    kernel: int = 5
    pool: int = 3
    hidden: int = 256
    # model=transformer: width is the model width, layers the blocks
    heads: int = 4
    context: int = 64       # tokens per training window (the attention span)
    dropout: float = 0.0
    # model=custom: a function (num_classes, **args) -> Flax modules, instantiated by Hydra
    _target_: Optional[str] = None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    name: LossName = LossName.cross_entropy
    # loss=custom: a function (outputs, y) -> per-example losses [B]
    _target_: Optional[str] = None


@dataclass
class OptimConfig:
    name: OptimName = OptimName.adam
    lr: float = 3e-5
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: Schedule = Schedule.piecewise
    boundaries: list[int] = field(default_factory=lambda: [300_000, 400_000])
    decay_factor: float = 0.1
    warmup_steps: int = 0
    clip_norm: float = 0.0
    forget: float = 0.98     # name=rls: weight β of the previous window's fit (memory about 1/(1-β) windows)
    ridge: float = 0.01      # name=rls: weight of the fit's ||W||² penalty


@dataclass
class SGConfig:
    hidden_layers: int = 2
    width: int = 1024
    conv_channels: int = 128
    kernel: int = 5
    batch_norm: bool = True
    scale: float = 1.0
    lambda_: float = 0.0
    lambda_final: Optional[float] = None
    lambda_steps: int = 0
    warmup_steps: int = 0
    aux: bool = False
    aux_weight: float = 1.0
    discount: float = 1.0
    squash_cell: bool = False
    trace_lambda: float = 0.0
    trace_windows: int = 4
    trace: TraceKind = TraceKind.forward
    # model=lstm: the core steps along the true gradient of the next trace_windows windows instead of ĝ (a
    # diagnostic: DNI with a perfect M, to tell a short budget from a wrong ĝ)
    oracle: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class AuxConfig:
    """mode=dgl: the auxiliary classifier on each module's output (Belilovsky et al. 2020)."""

    hidden_layers: int = 0   # Linear -> BN -> ReLU layers before the linear classifier (0: a linear head)
    width: int = 256
    pool: int = 2            # conv activations: spatial average pooling to pool x pool first
    batch_norm: bool = True


@dataclass
class SyntheticInputConfig:
    hidden_layers: int = 2
    width: int = 1024
    conv_channels: int = 64
    batch_norm: bool = True


@dataclass
class TrainerConfig:
    steps: int = 500_000
    epochs: Optional[int] = None
    batch_size: int = 256
    eval_every: Optional[int] = None
    eval_batch_size: int = 1000
    log_every: int = 100
    progress: bool = True
    resume: Optional[str] = None
    update_prob: float = 1.0
    bptt: int = 0


@dataclass
class LogConfig:
    grad_probe_every: int = 500
    tensorboard: bool = True


@dataclass
class CheckpointConfig:
    every: int = 1000
    keep: int = 3


@dataclass
class TrainConfig:
    defaults: list[Any] = field(default_factory=list)
    mode: str = "dni"  # a file of configs/mode/ and a rule of sgrad/modes/ (checked by sgrad.run.build.check)
    seed: int = 0
    parallel: Parallel = Parallel.none
    replicas: int = 1  # parallel=pipeline: copies of the pipeline, each on 1/replicas of the batch (K x replicas devices)
    # parallel=pipeline, mode=dni/cdni: the share of each SG model M_i's regression batch that device i+1 computes on a
    # copy of M_i (device i does the rest; both apply the summed gradient). 0: M_i regresses on device i alone.
    sg_share: float = 0.0
    # parallel=pipeline, mode=dgl: the share of each minibatch's rows on which device 1 trains a copy of module 0 (and
    # its auxiliary classifier), device 0 the rest; both apply the summed gradient. For a first module that costs
    # more than the second device's: it moves work to that device, not whole layers.
    first_share: float = 0.0
    # parallel=pipeline: consecutive modules on each device (K / modules_per_device devices), e.g. a wide network cut
    # into more modules than devices so that each device's share can be balanced
    modules_per_device: int = 1
    distributed: bool = False
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sg: SGConfig = field(default_factory=SGConfig)
    si: SyntheticInputConfig = field(default_factory=SyntheticInputConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


GROUPS = ("dataset", "model", "mode", "loss", "optim", "exp", "hparams_search", "debug")


class ConfigError(ValueError):
    """A setting is outside what sgrad can run; the message names key and allowed values."""


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {allowed}")


def flat_config(cfg: Any) -> dict[str, Any]:
    """The composed config as {dotted key: value} (lists are values), enums as strings, without Hydra's keys."""
    from omegaconf import OmegaConf
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg) else cfg
    out: dict[str, Any] = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                if k not in ("defaults", "hydra"):
                    walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node
    walk(tree, "")
    return out


def _check_finite(cfg: Any) -> None:
    """No setting of sgrad means anything at inf or nan (a learning rate, a scale, a fraction)."""
    for key, value in flat_config(cfg).items():
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, v in items:
            if isinstance(v, float):
                require(math.isfinite(v), key if i is None else f"{key}[{i}]", v, "a finite number")


def validate(cfg: Any) -> None:
    """Range checks that a type system cannot express."""
    _check_finite(cfg)
    require(cfg.model.layers >= 2, "model.layers", cfg.model.layers, "an integer >= 2")
    require(cfg.model.width >= 1, "model.width", cfg.model.width, "an integer >= 1")
    require(cfg.model.channels >= 1, "model.channels", cfg.model.channels, "an integer >= 1")
    require(
        1 <= cfg.model.dni_every < cfg.model.layers,
        "model.dni_every",
        cfg.model.dni_every,
        f"an integer in [1, model.layers-1={cfg.model.layers - 1}] so that at least one interface exists",
    )
    if str(cfg.model.partition) == "even":
        require(cfg.model.modules is None, "model.modules", cfg.model.modules,
               "null with model.partition=even (modules come every model.dni_every layers); "
               "set model.partition=balanced to choose how many")
    else:
        require(cfg.model.modules is not None and 2 <= cfg.model.modules <= cfg.model.layers, "model.modules",
               cfg.model.modules, f"an integer in [2, model.layers={cfg.model.layers}] with model.partition={cfg.model.partition}")
        # Both say where the boundaries go: refused rather than one silently ignored.
        require(cfg.model.dni_every == 1, "model.dni_every", cfg.model.dni_every,
                f"1 with model.partition={cfg.model.partition} (model.modules={cfg.model.modules} sets the "
                "boundaries); use model.partition=even to place them every model.dni_every layers")
    require(cfg.sg.hidden_layers >= 0, "sg.hidden_layers", cfg.sg.hidden_layers, "an integer >= 0 (0 = linear)")
    require(cfg.sg.width >= 1, "sg.width", cfg.sg.width, "an integer >= 1")
    require(cfg.trainer.steps >= 1, "trainer.steps", cfg.trainer.steps, "an integer >= 1")
    require(
        cfg.trainer.epochs is None or cfg.trainer.epochs >= 1,
        "trainer.epochs", cfg.trainer.epochs, "null or an integer >= 1",
    )
    require(cfg.trainer.batch_size >= 1, "trainer.batch_size", cfg.trainer.batch_size, "an integer >= 1")
    require(
        cfg.trainer.eval_every is None or cfg.trainer.eval_every >= 1,
        "trainer.eval_every", cfg.trainer.eval_every, "null (once per epoch) or an integer >= 1",
    )
    require(cfg.trainer.log_every >= 1, "trainer.log_every", cfg.trainer.log_every, "an integer >= 1")
    require(cfg.log.grad_probe_every >= 0, "log.grad_probe_every", cfg.log.grad_probe_every, "an integer >= 0 (0 = off)")
    require(0.0 <= cfg.trainer.update_prob <= 1.0, "trainer.update_prob", cfg.trainer.update_prob,
           "a probability in [0, 1]")
    for key in ("lambda_", "lambda_final"):
        v = cfg.sg[key]
        require(v is None or 0.0 <= v <= 1.0, f"sg.{key}", v, "in [0, 1] (0: DNI, 1: backprop)")
    require(cfg.sg.warmup_steps >= 0, "sg.warmup_steps", cfg.sg.warmup_steps, "an integer >= 0")
    require(cfg.checkpoint.every >= 0, "checkpoint.every", cfg.checkpoint.every,
           "an integer >= 0 (0 = only at the end and on preemption)")
    require(cfg.replicas >= 1, "replicas", cfg.replicas, "an integer >= 1")
    require(cfg.replicas == 1 or str(cfg.parallel) == "pipeline", "replicas", cfg.replicas,
            "1 unless parallel=pipeline (parallel=data already uses every device)")
    require(cfg.trainer.batch_size % cfg.replicas == 0, "replicas", cfg.replicas,
            f"a divisor of trainer.batch_size={cfg.trainer.batch_size}")
    require(cfg.checkpoint.keep >= 1, "checkpoint.keep", cfg.checkpoint.keep, "an integer >= 1")
    require(0.0 <= cfg.sg_share < 1.0, "sg_share", cfg.sg_share, "in [0, 1): the share of each SG model's regression "
            "batch done on the device above")
    require(cfg.sg_share == 0.0 or (str(cfg.parallel) == "pipeline" and cfg.replicas == 1), "sg_share", cfg.sg_share,
            "0 unless parallel=pipeline with replicas=1")
    require(0.0 <= cfg.first_share < 1.0, "first_share", cfg.first_share, "in [0, 1): the share of each "
            "minibatch's rows on which device 1 trains a copy of module 0")
    require(cfg.first_share == 0.0 or (str(cfg.parallel) == "pipeline" and cfg.replicas == 1 and cfg.sg_share == 0.0
                                       and cfg.modules_per_device == 1), "first_share", cfg.first_share,
            "0 unless parallel=pipeline with replicas=1, sg_share=0 and modules_per_device=1")
    require(cfg.modules_per_device >= 1, "modules_per_device", cfg.modules_per_device, "an integer >= 1")
    require(cfg.modules_per_device == 1 or (str(cfg.parallel) == "pipeline" and cfg.replicas == 1
                                            and cfg.sg_share == 0.0), "modules_per_device", cfg.modules_per_device,
            "1 unless parallel=pipeline with replicas=1 and sg_share=0")
    text_tasks = ("ptb_char", "text")
    image_tasks = LSTM_IMAGE_DATASETS
    sequence_tasks = ("copy", "repeat_copy", "ptb_char", "text", "two_timescale")
    if str(cfg.model.name) == "transformer":
        require(str(cfg.dataset.name) in text_tasks, "dataset.name", str(cfg.dataset.name),
                f"one of {', '.join(text_tasks)} for model.name=transformer")
        require(cfg.trainer.bptt == 0, "trainer.bptt", cfg.trainer.bptt,
                "0 for model=transformer (model.context sets its window)")
        require(cfg.model.context >= 2, "model.context", cfg.model.context, "an integer >= 2")
        require(cfg.model.heads >= 1 and cfg.model.width % cfg.model.heads == 0, "model.heads", cfg.model.heads,
                f"a divisor of model.width={cfg.model.width}")
        require(0.0 <= cfg.model.dropout < 1.0, "model.dropout", cfg.model.dropout, "in [0, 1)")
    elif str(cfg.model.name) == "lstm" or str(cfg.dataset.name) in sequence_tasks:
        require(str(cfg.model.name) == "lstm", "model.name", str(cfg.model.name),
               f"lstm{' or transformer' if str(cfg.dataset.name) in text_tasks else ''} for "
               f"dataset.name={str(cfg.dataset.name)}")
        require(str(cfg.dataset.name) in sequence_tasks + image_tasks, "dataset.name", str(cfg.dataset.name),
               f"one of {', '.join(sequence_tasks + image_tasks)} for model.name=lstm")
        require(cfg.dataset.pixels_per_step >= 1, "dataset.pixels_per_step", cfg.dataset.pixels_per_step,
                "an integer >= 1 (1: pixel by pixel)")
        require(cfg.trainer.epochs is None, "trainer.epochs", cfg.trainer.epochs,
                "null for model=lstm (a sequence run counts windows: set trainer.steps)")
        require(cfg.trainer.bptt >= 1, "trainer.bptt", cfg.trainer.bptt,
               "an integer >= 1 for model=lstm (the truncation window T)")
        require(str(cfg.parallel) == "none", "parallel", str(cfg.parallel), "none for model=lstm")
        require(cfg.model.hidden >= 1, "model.hidden", cfg.model.hidden, "an integer >= 1")
        require(cfg.dataset.start_length >= 1, "dataset.start_length", cfg.dataset.start_length, "an integer >= 1")
        require(cfg.dataset.max_repeats >= 1, "dataset.max_repeats", cfg.dataset.max_repeats, "an integer >= 1")
        require(0.0 <= cfg.sg.discount <= 1.0, "sg.discount", cfg.sg.discount, "in [0, 1]")
        require(0.0 <= cfg.sg.trace_lambda <= 1.0, "sg.trace_lambda", cfg.sg.trace_lambda,
                "in [0, 1] (0: the paper's one-window bootstrapped target)")
        require(cfg.sg.trace_windows >= 1, "sg.trace_windows", cfg.sg.trace_windows, "an integer >= 1")
    else:
        require(cfg.trainer.bptt == 0, "trainer.bptt", cfg.trainer.bptt, "0 unless model.name=lstm")
    windowed = str(cfg.model.name) == "lstm" and str(cfg.dataset.name) in ("copy", "repeat_copy", *text_tasks,
                                                                          *image_tasks)
    require(windowed or cfg.sg.trace_lambda == 0.0, "sg.trace_lambda", cfg.sg.trace_lambda,
            "0 unless model.name=lstm on copy, repeat_copy, ptb_char, text or images (the windowed LSTM's SG)")
    accumulate = str(cfg.sg.trace) == "accumulate"
    require(windowed or not accumulate, "sg.trace", str(cfg.sg.trace),
            "forward unless model.name=lstm on copy, repeat_copy, ptb_char, text or images (the windowed LSTM's SG)")
    require(not (accumulate and cfg.sg.oracle), "sg.oracle", cfg.sg.oracle,
            "false with sg.trace=accumulate (the oracle reads the windows ahead; accumulate BP(λ) reads none)")
    require(not (accumulate and str(cfg.sg.optim.name) == "rls"), "sg.optim.name", str(cfg.sg.optim.name),
            "adam or sgd with sg.trace=accumulate (rls refits M onto targets; BP(λ)'s update has none)")
    require(windowed or not cfg.sg.oracle, "sg.oracle", cfg.sg.oracle,
            "false unless model.name=lstm on copy, repeat_copy, ptb_char, text or images (the windowed LSTM's SG)")
    if str(cfg.model.name) in ("lstm", "transformer") or str(cfg.dataset.name) in sequence_tasks:
        for key in ("valid_fraction", "test_fraction"):
            require(0.0 < cfg.dataset[key] < 0.5, f"dataset.{key}", cfg.dataset[key], "a fraction in (0, 0.5)")
    if str(cfg.model.name) == "custom":
        require(bool(cfg.model._target_), "model._target_", cfg.model._target_,
                "a function's import path with model=custom (it returns your Flax modules)")
    require(cfg.aux.hidden_layers >= 0, "aux.hidden_layers", cfg.aux.hidden_layers, "an integer >= 0 (0 = linear)")
    require(cfg.aux.width >= 1, "aux.width", cfg.aux.width, "an integer >= 1")
    require(cfg.aux.pool >= 1, "aux.pool", cfg.aux.pool, "an integer >= 1")
    require(str(cfg.optim.name) != "rls", "optim.name", cfg.optim.name, "adam or sgd (rls is for sg.optim)")
    if str(cfg.sg.optim.name) == "rls":
        require(0.0 < cfg.sg.optim.forget <= 1.0, "sg.optim.forget", cfg.sg.optim.forget, "a float in (0, 1]")
        require(cfg.sg.optim.ridge > 0, "sg.optim.ridge", cfg.sg.optim.ridge, "a float > 0")
    for prefix, optim in (("optim", cfg.optim), ("sg.optim", cfg.sg.optim)):
        require(optim.lr > 0, f"{prefix}.lr", optim.lr, "a float > 0")
        require(0 < optim.decay_factor, f"{prefix}.decay_factor", optim.decay_factor, "a float > 0")
        bounds = list(optim.boundaries)
        require(bounds == sorted(bounds) and all(b > 0 for b in bounds), f"{prefix}.boundaries", bounds,
               "an increasing list of positive step numbers")
