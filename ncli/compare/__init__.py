"""``ncli compare``: many measure records side by side (docs in the README).

  load    inputs (feature files measured here, JSON lines, stdin) -> ordered runs, groups
  table   rows, trends, sparklines, width-aware rich tables
  export  the ncli.compare/1 JSON object and tidy CSV
  series  which records form one training run (a line of the figure): folder, run name, --group
  plot    the paper's figures (matplotlib, imported lazily); plot_layers: against depth;
          plot_per_class: per-class heat maps
"""

SCHEMA = "ncli.compare/1"  # the JSON object export.py writes and load.py reads back
