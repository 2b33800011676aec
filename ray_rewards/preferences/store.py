"""All labels gathered so far, as a Parquet folder that ``ray-rewards train`` reads.

Each :meth:`PreferenceStore.append` writes one part file of the preference schema
(:func:`ray_rewards.train.schemas.preference_schema`), atomically, under a name that
sorts by time; nothing is ever rewritten, so a crash loses at most the append in
progress and a new store on the same folder carries on. The folder is a data set for
:func:`~ray_rewards.train.schemas.read_numpy`, :func:`~ray_rewards.train.schemas.read_parquet`
and ``TrainConfig(train_data=...)``.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from gymnasium import spaces

from ray_rewards import storage
from ray_rewards.preferences import _files
from ray_rewards.preferences.fragments import Pairs, num_pairs, preference_table
from ray_rewards.train import schemas


class PreferenceStore:
    """An append-only Parquet folder of labeled pairs at ``path`` (local or URI).

    The schema comes from the env's spaces when given, else from the existing part
    files, else from the first append's arrays (observation and action dtypes and
    shapes); every append must fit it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        observation_space: spaces.Space | None = None,
        action_space: spaces.Space | None = None,
    ) -> None:
        self.path = storage.absolute(path)
        self._spaces = (observation_space, action_space)
        if (observation_space is None) != (action_space is None):
            raise ValueError("PreferenceStore: give both spaces or neither")
        self._scan()

    def _scan(self) -> None:
        """Count the stored rows and read the schema from the folder's files."""
        self._schema: pa.Schema | None = None
        self._num_rows = 0
        for fs, file in _files.list_parquet(self.path).values():
            with fs.open_input_file(file) as f:
                meta = pq.ParquetFile(f).metadata
                self._num_rows += meta.num_rows
                if self._schema is None:
                    self._schema = meta.schema.to_arrow_schema()

    def _schema_for(self, pairs: Pairs) -> pa.Schema | None:
        if self._spaces[0] is None:
            return self._schema
        length = np.shape(pairs["obs_1"])[1]
        return schemas.preference_schema(*self._spaces, length)

    def append(self, pairs: Pairs, preferences: np.ndarray) -> str | None:
        """Store labeled pairs as one new part file (extra columns such as ``rewards_1``
        and ``query_id`` dropped); returns its path (None for no pairs).
        """
        if not num_pairs(pairs):
            return None
        table = preference_table(pairs, preferences, self._schema_for(pairs))
        if self._schema is not None and not table.schema.equals(self._schema, check_metadata=False):
            raise ValueError(
                f"PreferenceStore.append: the pairs do not fit {self.path}'s schema\n"
                f"{self._schema}\ngot\n{table.schema}"
            )
        self._schema = self._schema or table.schema
        path = _files.join(self.path, _files.new_name("part-"))
        _files.write_table(path, table)
        self._num_rows += table.num_rows
        return path

    def load(self) -> dict[str, np.ndarray]:
        """All labeled pairs so far: the preference-schema columns ``(N, ...)``
        (fragment ``terminateds`` as 0/1 uint8). Raises ValueError when empty.
        """
        return schemas.read_numpy(self.path, schemas.PREFERENCE_COLUMNS)

    def __len__(self) -> int:
        """Labeled pairs stored (by this and earlier stores on the folder)."""
        return self._num_rows

    def copy_to(self, folder: str, filesystem: pafs.FileSystem | None = None) -> int:
        """Copy every part file into ``folder`` (e.g. a checkpoint's); returns how many."""
        files = _files.list_parquet(self.path)
        for name, (fs, file) in files.items():
            with fs.open_input_file(file) as f:
                data = f.read()
            storage.write_bytes(f"{folder.rstrip('/')}/{name}", data, filesystem=filesystem)
        return len(files)

    def restore_from(self, folder: str, filesystem: pafs.FileSystem | None = None) -> None:
        """Make this store hold exactly the part files of ``folder`` (a checkpoint's
        copy): the ones it lacks are copied in (its own folder was lost, or is on
        another machine); the ones added after that checkpoint are moved, not
        deleted, to ``<path>.superseded/`` (a run resumed from an older checkpoint
        gathers its labels again; an asynchronous gatherer's answers are still in its
        queue). A ``folder`` that does not exist leaves the store as it is.
        """
        fs, root = storage.resolve(folder, filesystem)
        fs = fs or pafs.LocalFileSystem()
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            return
        saved = {
            info.base_name: info.path
            for info in fs.get_file_info(pafs.FileSelector(root))
            if info.base_name.endswith(".parquet")
        }
        have = _files.list_parquet(self.path)
        for name, path in saved.items():
            if name not in have:
                with fs.open_input_file(path) as f:
                    storage.write_bytes(_files.join(self.path, name), f.read())
        extra = sorted(set(have) - set(saved))
        if extra:
            own_fs, _ = have[extra[0]]
            aside = f"{self.path.rstrip('/')}.superseded"
            own_fs.create_dir(storage.resolve(aside)[1], recursive=True)
            for name in extra:
                own_fs.move(have[name][1], storage.resolve(_files.join(aside, name))[1])
        self._scan()


__all__ = ["PreferenceStore"]
