from pathlib import Path

import pyarrow as pa
from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from pydantic import Field

from facepipeline.tables import TableStore


class ParquetTableIOManager(ConfigurableIOManager):
    """Stores Arrow tables as ``<home>/tables/<asset>.parquet`` and says where, and how big."""

    home: str = Field(description="Absolute path of FACEPIPELINE_HOME.")

    def _store(self) -> TableStore:
        return TableStore(Path(self.home) / "tables")

    @staticmethod
    def _name(context: OutputContext | InputContext) -> str:
        return "__".join(context.asset_key.path)

    def handle_output(self, context: OutputContext, obj: pa.Table) -> None:
        if not isinstance(obj, pa.Table):
            raise TypeError(f"{context.asset_key.to_user_string()} must return a pyarrow.Table, got {type(obj).__name__}")
        path = self._store().write(self._name(context), obj)
        context.add_output_metadata(
            {"path": MetadataValue.path(str(path)), "row_count": obj.num_rows, "file_bytes": path.stat().st_size}
        )

    def load_input(self, context: InputContext) -> pa.Table:
        table = self._store().read(self._name(context))
        if table is None:
            raise FileNotFoundError(f"{context.asset_key.to_user_string()} has not been materialized yet")
        return table
