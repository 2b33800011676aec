"""The local engine: Parquet to Parquet in this process, streaming, without Ray.

pyarrow reads each input file (local or URI, through :mod:`ray_rewards.storage`)
batch by batch, one batch ahead in a background thread;
:class:`~ray_rewards.data.batches.BatchRelabeler` adds the reward column here; each
input file becomes one output part, written as it goes by another thread (row
groups of about :data:`ROW_GROUP_BYTES`). Memory holds an input row group, a few
batches and two output row groups, never the data set (measured: 0.4-0.5 GB peak
RSS for 1M to 8M Pendulum rows, 0.26 GB of it the interpreter with torch). Ray's tensor columns keep
their type (without Ray loaded, pyarrow keeps the extension's name and shape in
the field metadata), so the output reads back as the Ray engine's does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch as th

from ray_rewards.data.batches import BatchRelabeler, check_output_column
from ray_rewards.data.columns import check_arrow_schema

T = TypeVar("T")

ROW_GROUP_BYTES = 32 * 2**20
"""Output batches are buffered up to this size, then written as one row group."""

COMPACT_BYTES = 2**20
"""Buffered output batches are merged into one contiguous table per this size."""


def parquet_rows(fs: pafs.FileSystem, files: list[str]) -> int:
    """Rows of the Parquet ``files``, from their footers (no data is read)."""
    total = 0
    for name in files:
        with fs.open_input_file(name) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


@contextlib.contextmanager
def torch_threads(threads: float) -> Iterator[None]:
    """Run torch with ``threads`` intra-op threads (at least one), then restore its setting.

    As a Ray Data actor computes with its ``num_cpus``: a small net gains little from
    more threads, and on a busy machine threads that wait for each other lose a lot
    (measured on a loaded 2-core box: batches of 4096 ten times slower with 2 threads).
    """
    before = th.get_num_threads()
    th.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        th.set_num_threads(before)


def _file_batches(
    fs: pafs.FileSystem, files: list[str], relabel: BatchRelabeler, batch_size: int
) -> Iterator[tuple[int, int, pa.Table]]:
    """``(file index, first row in the file, table)`` of each non-empty batch, file by
    file, each file's schema checked when it is opened.
    """
    for i, name in enumerate(files):
        with fs.open_input_file(name) as f:
            pf = pq.ParquetFile(f)
            check_arrow_schema(pf.schema_arrow, relabel.net)
            check_output_column(relabel.column, pf.schema_arrow.names)
            start = 0
            for batch in pf.iter_batches(batch_size=batch_size):
                if batch.num_rows:
                    yield i, start, pa.Table.from_batches([batch])
                    start += batch.num_rows


def _prefetched(pool: ThreadPoolExecutor, items: Iterator[T]) -> Iterator[T]:
    """``items``, each produced in ``pool`` while the caller works on the one before
    (pyarrow releases the GIL while it reads and decodes).
    """
    done = object()
    ahead = pool.submit(next, items, done)
    while (item := ahead.result()) is not done:
        ahead = pool.submit(next, items, done)
        yield item


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding: all but floating-point ones (continuous values
    rarely repeat, and trying a dictionary first made writing about 5x slower).
    """

    def floating(dtype: pa.DataType) -> bool:
        if isinstance(dtype, pa.ExtensionType):
            dtype = dtype.storage_type
        while (
            pa.types.is_list(dtype)
            or pa.types.is_large_list(dtype)
            or pa.types.is_fixed_size_list(dtype)
        ):
            dtype = dtype.value_type
        return pa.types.is_floating(dtype)

    return [f.name for f in schema if not floating(f.type)]


class _PartWriter:
    """Writes the output parts in a background thread, one row group per
    :data:`ROW_GROUP_BYTES` of output, at most one row group in flight.
    """

    def __init__(self, pool: ThreadPoolExecutor, out_dir: str):
        self.pool = pool
        self.out_dir = out_dir
        self.writer: pq.ParquetWriter | None = None
        self.part = -1
        self.fresh: list[pa.Table] = []
        self.fresh_bytes = 0
        self.pending: list[pa.Table] = []
        self.pending_bytes = 0
        self.in_flight: Future | None = None

    def add(self, part: int, table: pa.Table) -> None:
        if part != self.part:
            self.close()
            self.part = part
        self.fresh.append(table)
        self.fresh_bytes += table.nbytes
        if self.fresh_bytes >= COMPACT_BYTES:
            self._compact()
        if self.pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _compact(self) -> None:
        # Many small batches kept alive between the net's temporaries fragment the heap
        # (measured: RSS 2x higher); one contiguous table per COMPACT_BYTES does not.
        if self.fresh:
            table = pa.concat_tables(self.fresh).combine_chunks()
            self.pending.append(table)
            self.pending_bytes += table.nbytes
            self.fresh, self.fresh_bytes = [], 0

    def _flush(self) -> None:
        self._compact()
        if not self.pending:
            return
        table = pa.concat_tables(self.pending)
        self.pending, self.pending_bytes = [], 0
        if self.in_flight is not None:
            self.in_flight.result()
        if self.writer is None:
            path = os.path.join(self.out_dir, f"part-{self.part:05d}.parquet")
            self.writer = pq.ParquetWriter(
                path, table.schema, use_dictionary=_dictionary_columns(table.schema)
            )
        self.in_flight = self.pool.submit(
            self.writer.write_table, table, row_group_size=table.num_rows
        )

    def close(self, flush: bool = True) -> None:
        """Close the current part once its writes are done: with ``flush``, after writing
        what is buffered; without (the job failed), dropping it and any write error.
        """
        try:
            if flush:
                self._flush()
            if self.in_flight is not None:
                if flush:
                    self.in_flight.result()
                else:
                    self.in_flight.exception()
        finally:
            self.in_flight = None
            self.pending, self.pending_bytes = [], 0
            self.fresh, self.fresh_bytes = [], 0
            if self.writer is not None:
                writer, self.writer = self.writer, None
                writer.close()


def relabel_files(
    fs: pafs.FileSystem,
    files: list[str],
    out_dir: str,
    relabel: BatchRelabeler,
    batch_size: int,
    threads: float = 1,
) -> int:
    """Relabel each of ``files`` into ``out_dir/part-NNNNN.parquet`` (none for a file
    without rows), reading ahead and writing in background threads while the net
    runs with ``threads`` torch threads here; returns the rows written.

    A batch that fails raises its ValueError, naming the file and the batch's rows.
    """
    rows = 0
    with (
        torch_threads(threads),
        ThreadPoolExecutor(1, "relabel-read") as reader,
        ThreadPoolExecutor(1, "relabel-write") as write_pool,
    ):
        writer = _PartWriter(write_pool, out_dir)
        try:
            for i, start, table in _prefetched(
                reader, _file_batches(fs, files, relabel, batch_size)
            ):
                try:
                    out = relabel(table)
                except ValueError as err:
                    last = start + table.num_rows - 1
                    raise ValueError(
                        f"{err} [{files[i]}, rows {start}-{last} of the file]"
                    ) from err
                writer.add(i, out)
                rows += out.num_rows
        except BaseException:
            writer.close(flush=False)
            raise
        writer.close()
    return rows


__all__ = ["ROW_GROUP_BYTES", "parquet_rows", "relabel_files", "torch_threads"]
