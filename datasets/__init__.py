"""The catalogue of linked datasets and the synthetic generator. Imports nothing of the project."""

from datasets.catalogue import (
    Catalogue,
    CatalogueError,
    Column,
    ColumnClass,
    Dataset,
    Table,
    TableKind,
    load_catalogue,
)

__all__ = [
    "Catalogue",
    "CatalogueError",
    "Column",
    "ColumnClass",
    "Dataset",
    "Table",
    "TableKind",
    "load_catalogue",
]
