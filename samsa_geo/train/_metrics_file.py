"""metrics.json of a run folder: the run's summary, for rank 0."""
import json
import os
import os.path as osp
from typing import Any, Dict, Optional

from samsa_geo.train.checkpoint import atomic_write
from samsa_geo.train.run_folder import drop_stale_evaluations, in_folder


class MetricsFile:
    r"""The summary :obj:`metrics.json` in :obj:`out_dir`: read leniently
    (an unreadable file reads as empty), written atomically."""
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.path = osp.join(out_dir, 'metrics.json')

    def read(self) -> Dict[str, Any]:
        if osp.isfile(self.path):
            try:
                with open(self.path) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return {}
        return {}

    def write(self, summary: Dict[str, Any]) -> None:
        with atomic_write(self.path) as f:
            json.dump(summary, f, indent=2, sort_keys=True)

    def update(self, values: Dict[str, Any]) -> None:
        r"""Adds :obj:`values` to the summary."""
        summary = self.read()
        summary.update(values)
        self.write(summary)

    def record_evaluation(self, result: Dict[str, float], split: str,
                          checkpoint: Optional[str]) -> None:
        r"""Adds the metrics of an evaluation, with the name of the
        checkpoint it used under :obj:`checkpoint[split]`."""
        summary = self.read()
        summary.update(result)
        summary.setdefault('checkpoint', {})[split] = \
            self.checkpoint_name(checkpoint)
        self.write(summary)

    def checkpoint_name(self, path: Optional[str]) -> Optional[str]:
        r"""How the summary names the weights of an evaluation: a file name
        in :obj:`out_dir`, another path, or :obj:`None` (the weights in
        memory)."""
        if path is None:
            return None
        if in_folder(path, self.out_dir):
            return osp.basename(path)
        return os.fspath(path)

    def record_epoch(self, best: Dict[str, float], improved: bool,
                     **values: Any) -> None:
        r"""Writes the summary after an epoch: the flat :obj:`val_*` metrics
        of the selected epoch :obj:`best` and :obj:`values`; results
        evaluated with a checkpoint replaced this epoch are dropped."""
        summary = drop_stale_evaluations(self.read(), 'last.pt')
        if improved:
            summary = drop_stale_evaluations(summary, 'best.pt')
        summary.update(best)
        summary.update(values)
        self.write(summary)
