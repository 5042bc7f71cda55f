"""``ncli extract`` and ``ncli inspect``: checkpoint + data -> feature file; what a checkpoint holds.

Module top level imports typer and the standard library only: torch is imported inside the
function bodies, so ``ncli measure`` never loads it.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ncli.cli.app import command
from ncli.cli.options import ALLOW_EXTERNAL_HELP, GlobalMean
from ncli.console import install_hint
from ncli.errors import EnvironmentProblem


def require_torch(command_name: str) -> None:
    """One line naming the extra when PyTorch is missing (measure and compare never need it)."""
    try:
        import torch  # noqa: F401  (the command needs it next anyway)
    except ImportError:
        raise EnvironmentProblem(f"ncli {command_name} needs PyTorch, which is not installed: {install_hint('torch')}") from None


class Pool(str, Enum):
    none = "none"
    avg = "avg"
    max = "max"
    mean = "mean"
    cls = "cls"
    last = "last"


class Layout(str, Enum):
    auto = "auto"
    nchw = "nchw"
    nhwc = "nhwc"


class Compression(str, Enum):
    none = "none"
    lzf = "lzf"
    gzip = "gzip"


_ARCH_HELP = (
    "Model for state_dict/.safetensors weights: path/to/file.py:Name, pkg.module:Name, torchvision:NAME or "
    "timm:NAME (a class or factory, called with no arguments unless --arch-arg). With TorchScript, .pt2 or a "
    "pickled module, loads their weights into this model instead."
)


@command("Checkpoint(s) + data -> HDF5 feature file(s).")
def extract(
    checkpoints: List[Path] = typer.Argument(
        ..., metavar="CHECKPOINT...",
        help="Checkpoint files or Hugging Face model folders (their form is detected from their content); several need -o FOLDER/.",
        show_default=False,
    ),
    output: str = typer.Option(
        ..., "--output", "-o", metavar="OUTPUT",
        help="Feature file to write (HDF5, format 1; with --stats-only a statistics file), or FOLDER/ (a trailing slash or an "
        "existing folder; created when missing) to write FOLDER/<checkpoint stem>.h5 for each checkpoint.",
        show_default=False,
    ),
    data: List[str] = typer.Option(
        ..., "--data", "-d",
        help="SPLIT=SOURCE, repeatable. SOURCE: .h5/.hdf5/.npz with x,y (or x_SPLIT,y_SPLIT), or inputs named for the "
        "model (input_ids, attention_mask, pixel_values, ...) and y or labels; an ImageFolder folder or a root of split "
        "folders; torchvision:NAME:ROOT. A bare FILE or ROOT takes every split in it.",
        show_default=False,
    ),
    arch: Optional[str] = typer.Option(None, "--arch", help=_ARCH_HELP),
    arch_arg: List[str] = typer.Option([], "--arch-arg", help="key=value passed to the --arch class/factory (value: a Python literal or a string); repeatable."),
    ema: bool = typer.Option(False, "--ema", help="Use the EMA weights of a training checkpoint (keys ema, model_ema, state_dict_ema, ...)."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint",
        help="Load a checkpoint that can run code: a whole pickled model, a TorchScript archive whose code is not "
        "proven harmless, a .pt2 with native code. Only for files you trust.",
    ),
    epoch: Optional[int] = typer.Option(None, "--epoch", help="Training epoch to record (default: the checkpoint's 'epoch' entry)."),
    step: Optional[int] = typer.Option(None, "--step", help="Training step to record (default: the checkpoint's 'step'/'global_step')."),
    classifier: Optional[str] = typer.Option(None, "--classifier", help="Module path of the classifier (an nn.Linear), overriding discovery."),
    layer: List[str] = typer.Option([], "--layer", help="Also store this module's output, flattened, as /SPLIT/layers/NAME; repeatable."),
    pool: Pool = typer.Option(
        Pool.none, "--pool",
        help="For --layer outputs: none (flatten); avg or max over the dims after C of (N, C, ...), or over the tokens of "
        "(N, L, D) in transformers; mean (over the attention mask), cls or last token of (N, L, D).",
    ),
    x_key: Optional[str] = typer.Option(
        None, "--x-key", help="Inputs dataset in array files; '{split}' is replaced by the split name, and a bare --data FILE then takes every split it holds (--x-key 'X_{split}')."
    ),
    y_key: Optional[str] = typer.Option(None, "--y-key", help="Labels dataset in array files ('{split}' as for --x-key, e.g. 'y_{split}')."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=1, help="Images (folders and arrays): resize the shorter side and center-crop to this size."),
    normalize: Optional[str] = typer.Option(None, "--normalize", help="Images (folders and arrays): imagenet, cifar10, cifar100, mnist, none, or MEAN,..:STD,..."),
    layout: Layout = typer.Option(Layout.auto, "--layout", help="Image arrays: channel layout; auto tells NHWC from NCHW for uint8 (N, H, W, C) arrays."),
    channels: Optional[int] = typer.Option(None, "--channels", min=1, max=3, help="Images: convert to 1 (gray) or 3 (RGB) channels for the model."),
    batch_size: int = typer.Option(256, "--batch-size", "-b", min=1, help="Samples per forward pass."),
    num_workers: int = typer.Option(0, "--num-workers", min=0, help="DataLoader worker processes (0: load in the main process)."),
    device: str = typer.Option(
        "auto", "--device",
        help="auto (cuda if available, else mps, else cpu; says which), cpu, cuda, cuda:INDEX or mps. Under torchrun, "
        "cuda means each process's cuda:LOCAL_RANK.",
    ),
    amp: bool = typer.Option(False, "--amp", help="Run under autocast: float16 on a GPU (CUDA, MPS), bfloat16 on the CPU; recorded in the file."),
    compression: Compression = typer.Option(Compression.none, "--compression", help="HDF5 compression of the datasets."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace OUTPUT if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    allow_external: bool = typer.Option(False, "--allow-external", help=ALLOW_EXTERNAL_HELP),
    stats_only: bool = typer.Option(
        False, "--stats-only",
        help="Write a statistics file instead of the features: two passes over the data, a file whose size does not "
        "grow with the data; `ncli measure` reads it like a feature file.",
    ),
    split: Optional[str] = typer.Option(
        None, "--split", "-s", help="With --stats-only: the split whose class statistics define the metrics (default: train)."
    ),
    global_mean: Optional[GlobalMean] = typer.Option(
        None, "--global-mean", help="With --stats-only: mu_G = mean of class means ('class', default) or of all samples ('sample')."
    ),
    min_per_class: Optional[int] = typer.Option(
        None, "--min-per-class", min=1, metavar="K",
        help="With --stats-only: measure only the classes with at least K rows in --split (the others' rows count in no "
        "split); `ncli measure` of the file then takes the same --min-per-class.",
    ),
    ood: Optional[str] = typer.Option(
        None, "--ood", metavar="SPLIT",
        help="With --stats-only: an out-of-distribution --data split, summed in pass 1 (labels ignored, not evaluated); "
        "`ncli measure FILE --ood SPLIT` gives NC5.",
    ),
) -> None:
    """Run a checkpoint (or several, one file each) over data and write penultimate features, labels, logits and the classifier.

    The classifier is the nn.Linear whose output is what the model returns (found with forward hooks on one batch); its input is stored as the features, and features·Wᵀ + b is checked against the logits (the max error is stored in the file). Rows keep the source's order (/SPLIT/index). The file appears at OUTPUT only when complete; an existing OUTPUT needs --force; Ctrl-C leaves nothing behind.

    Checkpoint forms (detected from the content): a state_dict, plain or nested (state_dict, model, net; DataParallel 'module.', torch.compile '_orig_mod.' and Lightning 'model.' prefixes are handled), or .safetensors, with --arch; a TorchScript archive (hooks do not run in TorchScript, so the classifier's input is captured exactly by running the archive with that layer's weight set to the identity; --layer needs --arch); a torch.export .pt2 program; a Hugging Face save_pretrained folder (built by transformers from its config.json; a causal language model gives one row per predicted token, labelled with the next token); a whole pickled model, only with --trust-checkpoint.

    Several checkpoints: ncli extract ckpts/*.pth ... -o runs/ writes runs/<checkpoint stem>.h5 for each, loading torch and opening the data once. Every output is checked before the first checkpoint runs (existing ones need --force); the first failure stops the run: the files already written stay, nothing of the failing one is left, and a note says which were written.

    Examples:

    \b
      ncli extract fixtures/checkpoints/mlp_epoch0300.pt \\
        --arch fixtures/models.py:MLP --data fixtures/digits.npz -o mlp300.h5
      ncli extract fixtures/checkpoints/mlp_epoch*.pt \\
        --arch fixtures/models.py:MLP --data fixtures/digits.npz -o runs/
      ncli extract last.ckpt --arch nets.py:ResNet --arch-arg num_classes=100 \\
        --data train=c100.h5 --data test=c100.h5 --layer layer4 --pool avg \\
        -o feats.h5
      ncli extract fixtures/checkpoints/cnn_epoch0100_scripted.pt \\
        --data fixtures/digits.npz --device cuda --amp -o cnn.h5

    Statistics only: --stats-only runs the model over the data twice and writes only what `ncli measure` needs (class sums, within-class sums, decision counts, the classifier), a file of a few KiB to MiB whatever the number of samples, measured like a feature file. --split, --global-mean and --min-per-class are decided here, in the passes, and `ncli measure` of the file must be given the same ones; --ood SPLIT sums that split in pass 1, for `ncli measure FILE --ood SPLIT` (NC5).

    Distributed: torchrun --nproc_per_node K -m ncli extract ... runs K processes, each on a contiguous share of the batches (its own GPU with --device cuda); rank 0 assembles one file, equal to the single-process one. Multi-node: add --nnodes N --node_rank I --master_addr HOST --master_port PORT; OUTPUT's folder must be shared by every node.
    """

    require_torch("extract")
    from ncli.extract.api import extract_many
    from ncli.extract.arch import parse_arch_args
    from ncli.extract.distributed import PeerFailed
    from ncli.extract.options import ExtractOptions

    options = ExtractOptions(
        arch=arch, arch_args=parse_arch_args(arch_arg), ema=ema, trust=trust_checkpoint, classifier=classifier,
        layers=tuple(layer), pool=pool.value, epoch=epoch, step=step, x_key=x_key, y_key=y_key, image_size=image_size,
        normalize=normalize, layout=layout.value, channels=channels, batch_size=batch_size, num_workers=num_workers,
        device=device, amp=amp, force=force, compression=compression.value, progress=not quiet, allow_external=allow_external,
        stats_only=stats_only, stats_split=split, global_mean=global_mean.value if global_mean is not None else None,
        min_per_class=min_per_class, ood=ood,
    )
    try:
        extract_many(checkpoints, output, data, options)
    except PeerFailed as exc:  # torchrun: another rank failed and has said why; exit without repeating it
        raise typer.Exit(exc.exit_code) from None


@command("A checkpoint's form, linear layers and classifier.")
def inspect(
    checkpoint: Path = typer.Argument(..., help="Checkpoint file or Hugging Face model folder; its form is detected from its content.", show_default=False),
    arch: Optional[str] = typer.Option(None, "--arch", help=_ARCH_HELP),
    arch_arg: List[str] = typer.Option([], "--arch-arg", help="key=value passed to the --arch class/factory; repeatable."),
    ema: bool = typer.Option(False, "--ema", help="Inspect the EMA weights."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="Load a checkpoint that can run code (a pickled model, unproven TorchScript, a .pt2 with native code)."
    ),
    classifier: Optional[str] = typer.Option(None, "--classifier", help="Check this module as the classifier instead of discovering it."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Run one batch of this source (SPLIT=FILE or FILE) to find the classifier."),
    x_key: Optional[str] = typer.Option(None, "--x-key", help="Inputs dataset in the --data file."),
    y_key: Optional[str] = typer.Option(None, "--y-key", help="Labels dataset in the --data file."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Run a random batch of this per-sample shape, e.g. 3,32,32."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    allow_external: bool = typer.Option(False, "--allow-external", help=ALLOW_EXTERNAL_HELP),
) -> None:
    """Show a checkpoint's form, its linear layers, which one is the classifier, and why.

    Finding the classifier needs one forward pass: give --data or --input-shape, else ncli tries a random input shaped for the model's first layer. A state_dict without --arch lists the tensors that look like linear layers.

    Examples:

    \b
      ncli inspect fixtures/checkpoints/mlp_epoch0300.pt \\
        --arch fixtures/models.py:MLP --data fixtures/digits.npz
      ncli inspect fixtures/checkpoints/cnn_epoch0100_scripted.pt
    """

    require_torch("inspect")
    from ncli.extract.arch import parse_arch_args
    from ncli.extract.inspecting import inspect_checkpoint, print_inspect
    from ncli.extract.options import ExtractOptions

    options = ExtractOptions(
        arch=arch, arch_args=parse_arch_args(arch_arg), ema=ema, trust=trust_checkpoint, classifier=classifier,
        x_key=x_key, y_key=y_key, allow_external=allow_external,
    )
    print_inspect(inspect_checkpoint(checkpoint, options, data=data, input_shape=input_shape), as_json=json_out)
