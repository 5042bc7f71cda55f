"""Format-1 feature files (``docs/format.md``): a validating reader, direct whole-row reads,
and an atomic streaming writer; and statistics files, the same data accumulated. Only h5py and numpy; no torch, no CLI.

  schema       format constants and attribute conversions
  reader       FeatureFile (validating, streams a split in whole-row chunks)
  storage      LocalFile: links checked before they are followed, datasets before they are read
  direct_rows  DirectRows: preadv reads of uncompressed datasets, GIL released
  writer       FeatureWriter (temp file + atomic rename), write_features
  stats_file   statistics files (format "ncli.stats"): StoredStatistics arrays, written atomically
               and read back validated; is_statistics_file
"""

from ncli.features.reader import Chunk, FeatureFile, SplitInfo
from ncli.features.writer import FeatureWriter, write_features

__all__ = ["Chunk", "FeatureFile", "FeatureWriter", "SplitInfo", "write_features"]
