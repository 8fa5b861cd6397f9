"""Training data: the table contract (load/validate), the simulator and the Hillstrom adapter."""

from training.data.tables import (
    DataError,
    Dataset,
    Table,
    encode_table,
    load_dataset,
    load_table,
    read_frame,
    write_frame,
)

__all__ = [
    "DataError",
    "Dataset",
    "Table",
    "encode_table",
    "load_dataset",
    "load_table",
    "read_frame",
    "write_frame",
]
