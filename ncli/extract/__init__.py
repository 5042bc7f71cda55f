"""``ncli extract`` and ``ncli inspect``: checkpoint + data -> format-1 feature file.

Nothing here imports torch at module level (``ncli measure`` must not import torch); the
submodules below do, and the command line imports them inside its command functions.

  options       ExtractOptions: every extract option, in one object
  api           extract(checkpoint, output, data, options): in this process, or one torchrun rank
                extract_many(checkpoints, output, ...): several checkpoints, the data opened once
  targets       -o FILE or -o FOLDER/: each checkpoint's output, all checked before any work
  forms/        checkpoint forms (detect from content, load, make the extractor); sandbox, key alignment
  arch          --arch resolution (file.py:Name, pkg.module:Name, torchvision:NAME, timm:NAME)
  model         prepare(): checkpoint + --arch model -> extractor (no forward pass)
  extractors/   finding the classifier and capturing its input: eager, TorchScript, torch.export
  inputs        model inputs, a tensor or named tensors: to_device, batch_len, call_model
  archives      zip archives (checkpoints, .npz) checked before anything is decompressed
  data/         data sources (array files, image folders, torchvision datasets) -> batches
  devices       --device resolution, autocast
  job           setup(): everything before the first batch, and the file's provenance
  loop          write_rows(): batches -> model -> FeatureWriter, progress bar
  sink          checking and writing batches in a background thread; CUDA device-to-host copies
  interrupt     InterruptGuard: a Ctrl-C is never lost while the output is open
  distributed   torchrun: process group, the three phases, agreement between ranks
  shards        torchrun: each rank's share of rows and shard file, rank 0's assembly
  inspecting    ncli inspect
  stats_only    --stats-only: two passes into an Accumulator, a statistics file (torchrun: summed)
  capture       ncli.capture(model): the classifier's input and output in a training loop
"""
