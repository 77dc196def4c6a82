"""The catalogue: which datasets, tables and columns exist, and what class each column is.

The catalogue is data (TOML files, one per dataset) so that adding a dataset is adding a file.
Everything that decides what a query may touch reads column classes from here, never from
column names.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path


class ColumnClass(StrEnum):
    PERSON_KEY = "person_key"
    DIRECT_IDENTIFIER = "direct_identifier"
    QUASI_IDENTIFIER = "quasi_identifier"
    SENSITIVE = "sensitive"
    MEASURE = "measure"
    INTERNAL = "internal"
    PUBLIC = "public"


class TableKind(StrEnum):
    PERSON_LEVEL = "person_level"
    REFERENCE = "reference"
    OPT_OUT_REGISTER = "opt_out_register"
    CONSENT_REGISTER = "consent_register"


#: Classes that no query may ever reference, whatever a policy says.
NEVER_QUERYABLE = frozenset({ColumnClass.DIRECT_IDENTIFIER, ColumnClass.INTERNAL})
#: Table kinds that only the engine reads.
ENGINE_ONLY = frozenset({TableKind.OPT_OUT_REGISTER, TableKind.CONSENT_REGISTER})
#: SQL types the catalogue may declare (DuckDB names).
SQL_TYPES = frozenset({"BIGINT", "INTEGER", "DOUBLE", "VARCHAR", "DATE", "BOOLEAN"})


class CatalogueError(ValueError):
    """A catalogue file is malformed; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    cls: ColumnClass
    description: str
    nullable: bool = False
    #: the column's complete set of values, public knowledge (a code list): under
    #: differential privacy, groups keyed by such columns need no noisy threshold
    values: tuple[str, ...] = ()
    #: measures: the range a single value is clamped to under differential privacy
    bounds: tuple[float, float] | None = None
    #: measures: the columns of the same table it is computed from (a length of stay from two
    #: dates), which pin it as surely as the measure itself
    derived_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str
    dataset: str
    kind: TableKind
    description: str
    columns: tuple[Column, ...]
    #: a reference table's unique key: joined on it, the table matches at most one row
    key: str | None = None
    #: "person" when the table has exactly one row per person (checked when the engine loads
    #: it): a group key taken from it puts each person in one cell
    grain: str | None = None

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None

    @property
    def person_key(self) -> str | None:
        """The column that names the person a row belongs to, if the table is about people."""
        for col in self.columns:
            if col.cls is ColumnClass.PERSON_KEY:
                return col.name
        if self.kind in ENGINE_ONLY:
            return "person_id"
        return None


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    description: str
    tables: tuple[Table, ...]


@dataclass(frozen=True)
class Catalogue:
    datasets: tuple[Dataset, ...]
    _tables: dict[str, Table] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tables: dict[str, Table] = {}
        for ds in self.datasets:
            for t in ds.tables:
                if t.name in tables:
                    raise CatalogueError(
                        f"table {t.name!r} is declared by datasets {tables[t.name].dataset!r} "
                        f"and {ds.name!r}; table names must be unique across the catalogue"
                    )
                tables[t.name] = t
        object.__setattr__(self, "_tables", tables)

    @property
    def tables(self) -> dict[str, Table]:
        return dict(self._tables)

    def table(self, name: str) -> Table | None:
        return self._tables.get(name.lower())

    def dataset(self, name: str) -> Dataset | None:
        return next((d for d in self.datasets if d.name == name), None)

    def register(self, kind: TableKind) -> Table | None:
        """The engine-only table of a kind (the opt-out or the consent register)."""
        return next((t for t in self._tables.values() if t.kind is kind), None)

    def sql_schema(self) -> dict[str, dict[str, str]]:
        """Table -> column -> type, the shape sqlglot's qualifier wants."""
        return {t.name: {c.name: c.type for c in t.columns} for t in self._tables.values()}


def shipped_catalogue_dir() -> Path:
    return Path(str(resources.files("datasets") / "catalogue"))


def load_catalogue(directory: Path | None = None) -> Catalogue:
    """Load every ``*.toml`` file of a catalogue directory (the shipped one by default)."""
    directory = directory or shipped_catalogue_dir()
    files = sorted(Path(directory).glob("*.toml"))
    if not files:
        raise CatalogueError(f"{directory}: no catalogue files (*.toml) found")
    return Catalogue(tuple(_load_dataset(f) for f in files))


def _load_dataset(path: Path) -> Dataset:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path.name}: not valid TOML ({exc})") from exc
    where = path.name
    ds = _require(raw, "dataset", dict, where)
    name = _require(ds, "name", str, f"{where}: [dataset]")
    tables = []
    for i, t in enumerate(_require(raw, "tables", list, where)):
        twhere = f"{where}: tables[{i}]"
        kind_raw = _require(t, "kind", str, twhere)
        try:
            kind = TableKind(kind_raw)
        except ValueError:
            raise CatalogueError(
                f"{twhere}.kind: {kind_raw!r} is not a table kind; use one of "
                f"{', '.join(k.value for k in TableKind)}"
            ) from None
        columns = []
        for j, c in enumerate(_require(t, "columns", list, twhere)):
            cwhere = f"{twhere}.columns[{j}]"
            cls_raw = _require(c, "class", str, cwhere)
            try:
                cls = ColumnClass(cls_raw)
            except ValueError:
                raise CatalogueError(
                    f"{cwhere}.class: {cls_raw!r} is not a column class; use one of "
                    f"{', '.join(k.value for k in ColumnClass)}"
                ) from None
            typ = _require(c, "type", str, cwhere).upper()
            if typ not in SQL_TYPES:
                raise CatalogueError(
                    f"{cwhere}.type: {typ!r} is not supported; use one of {sorted(SQL_TYPES)}"
                )
            columns.append(
                Column(
                    name=_require(c, "name", str, cwhere).lower(),
                    type=typ,
                    cls=cls,
                    description=_require(c, "description", str, cwhere),
                    nullable=bool(c.get("nullable", False)),
                    values=tuple(c.get("values", ())),
                    bounds=_bounds(c, cls, cwhere),
                    derived_from=tuple(c.get("derived_from", ())),
                )
            )
        table = Table(
            name=_require(t, "name", str, twhere).lower(),
            dataset=name,
            kind=kind,
            description=_require(t, "description", str, twhere),
            columns=tuple(columns),
            key=t.get("key"),
            grain=t.get("grain"),
        )
        if table.grain not in (None, "person"):
            raise CatalogueError(f"{twhere}.grain: {table.grain!r}; the only grain is 'person'")
        if table.grain and kind is not TableKind.PERSON_LEVEL:
            raise CatalogueError(f"{twhere}.grain: only person_level tables have a grain")
        if table.key is not None and table.column(table.key) is None:
            raise CatalogueError(f"{twhere}.key: {table.key!r} is not a column of the table")
        keys = [c for c in table.columns if c.cls is ColumnClass.PERSON_KEY]
        if kind is TableKind.PERSON_LEVEL and len(keys) != 1:
            raise CatalogueError(
                f"{twhere}: a person_level table needs exactly one person_key column, "
                f"found {len(keys)}"
            )
        if kind is not TableKind.PERSON_LEVEL and keys:
            raise CatalogueError(f"{twhere}: only person_level tables may have a person_key")
        tables.append(table)
    return Dataset(
        name=name,
        title=_require(ds, "title", str, f"{where}: [dataset]"),
        description=_require(ds, "description", str, f"{where}: [dataset]"),
        tables=tuple(tables),
    )


def _bounds(c: dict, cls: ColumnClass, where: str) -> tuple[float, float] | None:
    raw = c.get("bounds")
    if raw is None:
        return None
    if cls is not ColumnClass.MEASURE:
        raise CatalogueError(f"{where}.bounds: only measure columns have bounds")
    if (not isinstance(raw, list) or len(raw) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw)
            or not raw[0] < raw[1]):
        raise CatalogueError(f"{where}.bounds: expected [lower, upper] numbers, lower < upper")
    return float(raw[0]), float(raw[1])


def _require(obj: dict, key: str, typ: type, where: str):
    if not isinstance(obj, dict) or key not in obj:
        raise CatalogueError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, typ):
        raise CatalogueError(f"{where}.{key}: expected {typ.__name__}, got {type(value).__name__}")
    return value
