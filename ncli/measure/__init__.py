"""``ncli measure``: feature file -> Neural Collapse metrics (``docs/metrics.md``).

  registry    every metric and per-split number, declared once (keys, captions, figure panels)
  metrics     pure math on sufficient statistics (numpy only): one function per metric
  pairs       statistics over pairs of classes: dense Gram while C fits one tile, a tiled
              sweep above (vocabulary-sized C, memory O(C·p + tile²)); closed-form ETF distances
  statistics  the streamed statistics as accumulators (ClassStatistics, SplitStatistics, merge)
              and the Model built between the two passes (means, μ_G, basis, W, b; the classes
              measured, --min-per-class)
  blocks      fixed, aligned blocks from a file or arrays; the ordered multi-threaded map
  engine      the numpy backend (per-block passes on CPU threads); engine_torch the torch one
  kernels     the per-block kernels: compiled (_kernels.c, built by setup.py) or numpy
  decisions   the tie rule: fast scores, exact re-decision in float64 among the candidates
  record      measure_file (the file driver), the measure record and its validator
  render      JSON lines and rich tables of records
  accumulator ncli.Accumulator: the two passes fed batch by batch (numpy arrays, torch tensors)
  user_batches  the checks of a user's batch (each refusal names the batch), host conversion
  device_passes the accumulator's batches kept on a torch device, checks read without waiting
  reduce      merge and all_reduce (torch.distributed, summed in rank order)
  stored      statistics files: Accumulator save/load, and measure of such a file
"""
