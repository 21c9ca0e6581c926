import json
import re
from pathlib import Path

import pyarrow as pa
from dagster import AssetKey, ConfigurableIOManager, InputContext, MetadataValue, OutputContext

from facepipeline.index import IndexVersion
from facepipeline.versions import replace_file
from resources.artifacts import ArtifactStoreResource


_SAFE_PARTITION = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def table_name(asset_key: AssetKey, partition_key: str | None = None) -> str:
    """The file name an asset's table is stored under (shared by the IO manager and its readers).

    A partition of a partitioned asset is a file of its own: ``<asset>/<partition>``.
    """
    name = "__".join(asset_key.path)
    if partition_key is None:
        return name
    if not _SAFE_PARTITION.match(partition_key) or partition_key.startswith("."):
        raise ValueError(f"partition key {partition_key!r} cannot name a file")
    return f"{name}/{partition_key}"


def _partition(context: OutputContext | InputContext) -> str | None:
    return context.partition_key if context.has_asset_partitions else None


class ParquetTableIOManager(ConfigurableIOManager):
    """Stores Arrow tables as ``$FACEPIPELINE_HOME/tables/<asset>.parquet`` and says where, and how big."""

    artifacts: ArtifactStoreResource

    def handle_output(self, context: OutputContext, obj: pa.Table) -> None:
        if not isinstance(obj, pa.Table):
            raise TypeError(f"{context.asset_key.to_user_string()} must return a pyarrow.Table, got {type(obj).__name__}")
        path = self.artifacts.tables().write(table_name(context.asset_key, _partition(context)), obj)
        context.add_output_metadata(
            {"path": MetadataValue.path(str(path)), "dagster/row_count": obj.num_rows, "file_bytes": path.stat().st_size}
        )

    def load_input(self, context: InputContext) -> pa.Table:
        table = self.artifacts.tables().read(table_name(context.asset_key, _partition(context)))
        if table is None:
            raise FileNotFoundError(f"{context.asset_key.to_user_string()} has not been materialized yet")
        return table


class IndexVersionIOManager(ConfigurableIOManager):
    """Passes an index version on by its number; downstream steps load it from the index store.

    The version's files are already on disk (immutable), so only a pointer is stored, and any later
    run, in any process, can load exactly the version an earlier run produced.
    """

    artifacts: ArtifactStoreResource

    def _pointer(self, asset_key: AssetKey) -> Path:
        return self.artifacts.root / "pointers" / f"{table_name(asset_key)}.json"

    def handle_output(self, context: OutputContext, obj: IndexVersion) -> None:
        pointer = self._pointer(context.asset_key)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        replace_file(pointer, json.dumps({"version": obj.version}))

    def load_input(self, context: InputContext) -> IndexVersion:
        pointer = self._pointer(context.asset_key)
        if not pointer.is_file():
            raise FileNotFoundError(f"{context.asset_key.to_user_string()} has not been materialized yet")
        return self.artifacts.index_store().get(json.loads(pointer.read_text())["version"])
