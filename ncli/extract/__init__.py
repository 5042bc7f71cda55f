"""``ncli extract`` and ``ncli inspect``: checkpoint + data -> format-1 feature file.

Nothing here imports torch at module level (``ncli measure`` must not import torch); the
submodules below do, and are imported lazily by ``ncli.extract.commands``.

  checkpoint  form detection by content and loading (state_dict / safetensors / TorchScript /
              torch.export / pickled module behind --trust-checkpoint), nested dicts, prefixes
  arch        --arch resolution (file.py:Name, pkg.module:Name, torchvision:NAME, timm:NAME)
  discover    finding the classifier (hooks / TorchScript graph / export graph), inspect rows
  data        data sources (array files, image folders, torchvision datasets)
  run         the extraction loop and the writer
  commands    the typer functions ``extract`` and ``inspect``
"""
