"""log.csv (always) and TensorBoard (when installed) for rank 0."""
import csv
import os.path as osp
from typing import Any, Dict, List, Optional

from samsa_geo.train.checkpoint import atomic_write
from samsa_geo.typing import WITH_TENSORBOARD

BASE_COLUMNS = ['epoch', 'lr', 'train_loss', 'time']


class RunLog:
    def __init__(self, out_dir: str, tensorboard: Optional[bool],
                 resume_epoch: Optional[int]) -> None:
        self.path = osp.join(out_dir, 'log.csv')
        self.rows: List[Dict[str, Any]] = []
        if resume_epoch is not None and osp.isfile(self.path):
            # Drop rows written after the checkpoint we resume from.
            with open(self.path, newline='') as f:
                self.rows = [r for r in csv.DictReader(f)
                             if int(r['epoch']) <= resume_epoch]
        self._rewrite()
        if tensorboard is None:
            tensorboard = WITH_TENSORBOARD
        if tensorboard and not WITH_TENSORBOARD:
            raise ImportError("'tensorboard=True' requires the 'tensorboard' "
                              "package (pip install tensorboard)")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(osp.join(out_dir, 'tensorboard'))

    def _columns(self) -> List[str]:
        extra = {key for row in self.rows for key in row} - set(BASE_COLUMNS)
        return BASE_COLUMNS + sorted(extra)

    def _rewrite(self) -> None:
        with atomic_write(self.path, newline='') as f:
            writer = csv.DictWriter(f, self._columns(), restval='')
            writer.writeheader()
            writer.writerows(self.rows)

    def append(self, row: Dict[str, Any]) -> None:
        # The file on disk always holds self.rows under the header
        # self._columns() (written by _rewrite in __init__, kept by both
        # branches), so a row without new names can simply be appended.
        columns = self._columns()
        self.rows.append(row)
        if not set(row) <= set(columns):
            self._rewrite()  # New metric names: rewrite with a wider header.
        else:
            with open(self.path, 'a', newline='') as f:
                csv.DictWriter(f, columns, restval='').writerow(row)
        if self.writer is not None:
            epoch = int(row['epoch'])
            for key, value in row.items():
                if key != 'epoch' and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
