"""MovieLens-100K (Harper & Konstan 2015): download, readers, and the default full-stage cascade dataset.

The MovieLens licence forbids redistribution, so the data is never shipped. :func:`prepare_movielens` reads
a local copy (``src``) or, without one, downloads the official GroupLens archive
(https://files.grouplens.org/datasets/movielens/ml-100k.zip) once into the user cache
(:mod:`cascade_ranking.data.cache`), written atomically (temp file + rename) and checked by content: 100,000
ratings by 943 users of 1,682 items. It then builds the full-stage cascade dataset
(:mod:`cascade_ranking.datasets.full_stage`).

**Accepted local copies** (``src``): the ``ml-100k.zip`` archive itself; a folder with the GroupLens files
``u.data`` (tab-separated ``user item rating timestamp``), ``u.user`` (``id|age|gender|occupation|zip``) and
``u.item`` (``id|title|release date|video release date|IMDb URL|19 genre flags``, Latin-1); a folder holding
``ml-100k/`` or ``ml-100k.zip``; or RecBole atomic files (``<name>.inter``, ``<name>.user``,
``<name>.item``, tab-separated with typed headers such as ``user_id:token``). :func:`read_recbole` and
:func:`recbole_log` read any dataset in RecBole atomic format (only ``.inter`` is required). Files are read
with ``pyarrow.csv``; bad input raises :class:`DataFormatError` naming the file and the column.

**Features** (id 0 = unknown everywhere):

* user: ``user_id``; ``age`` bucket (1: <18, 2: 18-24, 3: 25-34, 4: 35-44, 5: 45-49, 6: 50-55, 7: 56+, the
  MovieLens-1M buckets); ``gender``; ``occupation`` (21 values, alphabetical); ``zip`` = the zip code's first
  character (a US zip region digit, or a letter for a foreign postal code; alphabetical);
* context: UTC ``weekday`` and ``hour`` of the request;
* item: ``item_id``; ``genre`` = the first listed genre in the GroupLens genre order (Action=1 ...
  Western=18; the genre "unknown" is id 0); ``year`` = release-year bucket (1: before 1960, 2: 1960s,
  3: 1970s, 4: 1980s, 5: 1990-1993, 6: 1994, 7: 1995, 8: 1996, 9: 1997, 10: 1998 or later; 0 where the
  release year is missing or not a 4-digit year);
* history: the last 50 rated items (``item_id``, ``genre``), most recent first.

**Time partitions** (weeks, Monday 00:00 UTC to Sunday; a request's time is its first rating's timestamp).
The ratings span 1997-09-20 to 1998-04-22, which gives 32 weekly partitions, ``week-1997-09-15`` to
``week-1998-04-20`` (the name is the week's Monday):

* train: 26 weeks, 1997-09-15 to 1998-03-15 (7,962 requests);
* valid: 2 weeks, 1998-03-16 to 1998-03-29 (410 requests);
* test: 4 weeks, 1998-03-30 to 1998-04-26 (1,224 requests; the data ends on 1998-04-22).

9,596 requests of 10 ratings in total; 4,040 ratings in users' final partial chunks are in no request.

**Headroom** (``python benchmarks/headroom.py``, seed 0, joint recall on the 1,224 test requests of one fixed
scorer at every stage; scorers fitted on the training weeks only; two-stage top 20 of 40 / three-stage top
20 of 50): random 0.508 / 0.394; item popularity 0.515 / 0.401; co-occurrence with the history 0.571 /
0.469; logistic regression on both 0.527 / 0.413; non-personalised item prior (impression rate among the
item's training candidates) 0.715 / 0.560; a small two-tower model trained with BCE (3 passes, batch 256)
0.740 / 0.646.
"""

from __future__ import annotations

import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..data.cache import source_cache_dir
from ..data.schema import DatasetSchema, TrainDefaults
from .full_stage import Attribute, FullStageConfig, InteractionLog, build_full_stage

__all__ = [
    "DATASET_VERSION",
    "GENRES",
    "ML100K_COUNTS",
    "ML100K_URL",
    "PREPARE_HINT",
    "DataFormatError",
    "DatasetUnavailableError",
    "MovieLensTables",
    "RecBoleTables",
    "check_ml100k",
    "dataset_name",
    "download_movielens",
    "local_copies",
    "movielens_log",
    "movielens_provenance",
    "prepare_movielens",
    "read_grouplens",
    "read_movielens",
    "read_recbole",
    "recbole_log",
]

logger = logging.getLogger(__name__)

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
#: (ratings, users, items) of MovieLens-100K, the content check of every copy.
ML100K_COUNTS = (100_000, 943, 1_682)
#: Dataset version: bump when the construction or the features change.
DATASET_VERSION = 1
CACHE_NAME = "movielens-100k"
ZIP_NAME = "ml-100k.zip"
PREPARE_HINT = "cascade-ranking prepare movielens-100k --src PATH"


def local_copies() -> list[Path]:
    """Where a local MovieLens-100K copy is looked for when the download fails, in order: ``data/ml-100k`` and
    ``../shared/data/ml-100k`` under the current directory, then ``../shared/data/ml-100k`` beside this source
    checkout (an editable install). Only folders that exist are returned."""
    checkout = Path(__file__).resolve().parents[3]
    here = Path.cwd()
    found: list[Path] = []
    for path in (here / "data" / "ml-100k", here.parent / "shared" / "data" / "ml-100k",
                 checkout.parent / "shared" / "data" / "ml-100k"):  # fmt: skip
        if path.is_dir() and path.resolve() not in found:
            found.append(path.resolve())
    return found


#: The 19 GroupLens genre flags of ``u.item``, in file order.
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_AGE_EDGES = np.array([18, 25, 35, 45, 50, 56])
_YEAR_EDGES = np.array([1960, 1970, 1980, 1990, 1994, 1995, 1996, 1997, 1998])
_GROUPLENS_ITEM_COLUMNS = ["item_id", "title", "release_date", "video_release_date", "imdb_url"] + [
    f"genre_{i}" for i in range(len(GENRES))
]


class DataFormatError(ValueError):
    """A source file is missing or malformed; the message names the file and the column."""


class DatasetUnavailableError(RuntimeError):
    """The dataset could not be obtained (no network, failed or corrupted download); says what to run."""


# ------------------------------------------------------------------------------------------------------
# csv helpers (pyarrow.csv; no per-line Python)
# ------------------------------------------------------------------------------------------------------
def _read_csv(source: Path | bytes, what: str, *, delimiter: str, names: list[str], encoding: str = "utf8") -> pa.Table:
    """Read a header-less delimited file (``names`` = its columns) with every column as a string."""
    stream = pa.BufferReader(source) if isinstance(source, bytes) else source
    try:
        return pacsv.read_csv(
            stream,
            read_options=pacsv.ReadOptions(column_names=names, encoding=encoding, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False, double_quote=False),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                auto_dict_encode=False,
            ),
        )
    except FileNotFoundError as exc:
        raise DataFormatError(f"{what}: file not found") from exc
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{what}: not a readable {delimiter!r}-separated file ({exc})") from exc


def _strings(table: pa.Table, column: str, what: str) -> pa.Array:
    if column not in table.column_names:
        raise DataFormatError(f"{what}: column {column!r} missing (columns: {table.column_names})")
    col = table.column(column).combine_chunks()
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.string())
    return pc.utf8_trim_whitespace(col)


def _parse(table: pa.Table, column: str, typ: pa.DataType, what: str) -> np.ndarray:
    """Column ``column`` parsed as ``typ`` into numpy; raises DataFormatError naming file and column."""
    col = _strings(table, column, what)
    try:
        out = pc.cast(col, typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataFormatError(f"{what}: column {column!r} holds values that are not {typ} ({exc})") from exc
    a = out.to_numpy(zero_copy_only=False)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataFormatError(f"{what}: column {column!r} holds non-finite values")
    return a


def _vocabulary(tokens: pa.Array) -> pa.Array:
    """Sorted distinct non-empty tokens (numerically when they all parse as integers)."""
    uniq = pc.unique(tokens)
    uniq = uniq.filter(pc.not_equal(uniq, ""))
    try:
        order = np.argsort(pc.cast(uniq, pa.int64()).to_numpy(), kind="stable")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        order = pc.sort_indices(uniq).to_numpy()
    return uniq.take(pa.array(order, type=pa.int64()))


def _index(tokens: pa.Array, vocabulary: pa.Array) -> np.ndarray:
    """1-based position of every token in ``vocabulary``; 0 for tokens not in it (and for "")."""
    pos = pc.index_in(tokens, value_set=vocabulary)
    return pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def _first_token(col: pa.Array) -> pa.Array:
    """First whitespace-separated token of every string ("" for an empty string)."""
    return pc.fill_null(pc.list_element(pc.utf8_split_whitespace(col), 0), "")


# ------------------------------------------------------------------------------------------------------
# MovieLens tables (shared by both layouts)
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MovieLensTables:
    """MovieLens ratings and attributes in one normalised form, whichever layout they came from.

    Attributes:
        ratings: ``user_id`` (string), ``item_id`` (string), ``rating`` (float64), ``timestamp`` (int64 Unix s).
        users: ``user_id``, ``age`` (int64), ``gender``, ``occupation``, ``zip_code`` (strings).
        items: ``item_id`` (string), ``release_year`` (int64, 0 = unknown), ``genre`` (first listed genre,
            "" = none).
        source: a description of where the tables came from (file or folder).
        layout: ``"grouplens"`` or ``"recbole"``.
        users_file / items_file: the file the user / item table was read from (``u.user`` / ``ml-100k.user``,
            ...), named in errors found later; ``""`` = unknown (errors then name ``source``).
    """

    ratings: pa.Table
    users: pa.Table
    items: pa.Table
    source: str
    layout: str
    users_file: str = ""
    items_file: str = ""

    def counts(self) -> tuple[int, int, int]:
        """(number of ratings, distinct users who rated, distinct items rated)."""
        return (
            self.ratings.num_rows,
            len(pc.unique(self.ratings.column("user_id"))),
            len(pc.unique(self.ratings.column("item_id"))),
        )


def _ratings_table(user, item, rating, timestamp) -> pa.Table:
    return pa.table(
        {
            "user_id": user,
            "item_id": item,
            "rating": pa.array(rating, pa.float64()),
            "timestamp": pa.array(timestamp, pa.int64()),
        }
    )


def _year_from_text(col: pa.Array) -> np.ndarray:
    """Four-digit years at the end of the strings (``"1995"``, ``"01-Jan-1995"``); 0 where there is none."""
    tail = pc.utf8_slice_codeunits(col, -4)
    ok = pc.match_substring_regex(tail, r"^[0-9]{4}$")
    years = pc.cast(pc.if_else(ok, tail, "0"), pa.int64())
    return years.to_numpy(zero_copy_only=False).astype(np.int64)


def _grouplens_files(src: Path) -> tuple[dict[str, bytes | Path], str]:
    """Map ``u.data``/``u.user``/``u.item`` to their bytes (zip) or paths (folder)."""
    names = ("u.data", "u.user", "u.item")
    if src.is_dir():
        missing = [n for n in names if not (src / n).is_file()]
        if missing:
            raise DataFormatError(f"{src}: GroupLens file(s) {missing} missing (expected u.data, u.user, u.item)")
        return {n: src / n for n in names}, str(src)
    try:
        with zipfile.ZipFile(src) as zf:
            members = {Path(m).name: m for m in zf.namelist() if Path(m).name in names}
            missing = [n for n in names if n not in members]
            if missing:
                raise DataFormatError(f"{src}: the archive has no {missing} (expected ml-100k/u.data, u.user, u.item)")
            return {n: zf.read(members[n]) for n in names}, str(src)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataFormatError(f"{src}: not a readable zip archive ({exc})") from exc


def read_grouplens(src: str | Path) -> MovieLensTables:
    """Read MovieLens-100K in the GroupLens layout: the zip archive or a folder with u.data/u.user/u.item.

    Raises:
        DataFormatError: a file is missing, malformed (wrong number of columns) or holds unparsable values;
            names the file and the column.
    """
    src = Path(src)
    files, where = _grouplens_files(src)

    def what(n: str) -> str:
        return f"{where}:{n}" if not src.is_dir() else str(src / n)

    data = _read_csv(
        files["u.data"], what("u.data"), delimiter="\t", names=["user_id", "item_id", "rating", "timestamp"]
    )
    ratings = _ratings_table(
        _strings(data, "user_id", what("u.data")),
        _strings(data, "item_id", what("u.data")),
        _parse(data, "rating", pa.float64(), what("u.data")),
        _parse(data, "timestamp", pa.int64(), what("u.data")),
    )
    user_cols = ["user_id", "age", "gender", "occupation", "zip_code"]
    u = _read_csv(files["u.user"], what("u.user"), delimiter="|", names=user_cols)
    users = pa.table(
        {
            "user_id": _strings(u, "user_id", what("u.user")),
            "age": _parse(u, "age", pa.int64(), what("u.user")),
            **{c: _strings(u, c, what("u.user")) for c in ("gender", "occupation", "zip_code")},
        }
    )
    it = _read_csv(files["u.item"], what("u.item"), delimiter="|", names=_GROUPLENS_ITEM_COLUMNS, encoding="latin-1")
    flags = np.stack([_parse(it, f"genre_{i}", pa.int8(), what("u.item")) for i in range(len(GENRES))], axis=1).astype(
        bool
    )
    first = np.argmax(flags, axis=1)
    genre = np.where(flags.any(axis=1), np.asarray(GENRES, dtype=object)[first], "")
    items = pa.table(
        {
            "item_id": _strings(it, "item_id", what("u.item")),
            "release_year": _year_from_text(_strings(it, "release_date", what("u.item"))),
            "genre": pa.array(genre, pa.string()),
        }
    )
    return MovieLensTables(
        ratings=ratings,
        users=users,
        items=items,
        source=where,
        layout="grouplens",
        users_file=what("u.user"),
        items_file=what("u.item"),
    )


# ------------------------------------------------------------------------------------------------------
# RecBole atomic files
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecBoleTables:
    """RecBole atomic files, every column as strings.

    Attributes:
        inter / user / item: the tables (``user`` and ``item`` may be ``None`` when the file is absent);
            column names without their type suffix.
        types: file suffix (``"inter"``, ``"user"``, ``"item"``) -> column -> RecBole type (``token``,
            ``token_seq``, ``float``, ``float_seq``).
        paths: file suffix -> path.
    """

    inter: pa.Table
    user: pa.Table | None
    item: pa.Table | None
    types: dict[str, dict[str, str]]
    paths: dict[str, Path]


_RECBOLE_TYPES = {"token", "token_seq", "float", "float_seq"}


def _read_atomic(path: Path) -> tuple[pa.Table, dict[str, str]]:
    try:
        with open(path, encoding="utf8") as fh:
            header = fh.readline().rstrip("\r\n")
    except FileNotFoundError as exc:
        raise DataFormatError(f"{path}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not readable ({exc})") from exc
    names, types = [], {}
    for raw in header.split("\t"):
        name, sep, typ = raw.strip().rpartition(":")
        if not sep or not name or typ not in _RECBOLE_TYPES:
            raise DataFormatError(
                f"{path}: header field {raw!r} is not 'name:type' with a RecBole type {sorted(_RECBOLE_TYPES)}"
            )
        names.append(name)
        types[name] = typ
    if len(set(names)) != len(names):
        raise DataFormatError(f"{path}: duplicate column names in the header {names}")
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataFormatError(f"{path}: not a readable tab-separated RecBole file ({exc})") from exc
    return table, types


def read_recbole(folder: str | Path, dataset: str | None = None) -> RecBoleTables:
    """Read RecBole atomic files ``<dataset>.inter`` (required), ``.user`` and ``.item`` (optional).

    Args:
        folder: the folder holding the files.
        dataset: the files' stem; ``None`` = the only ``*.inter`` file in the folder.

    Raises:
        DataFormatError: no (or several) ``.inter`` files, a header without RecBole types, or a malformed file.
    """
    folder = Path(folder)
    if dataset is None:
        inters = sorted(folder.glob("*.inter"))
        if len(inters) != 1:
            raise DataFormatError(
                f"{folder}: expected exactly one RecBole '*.inter' file, found {[p.name for p in inters]}"
            )
        dataset = inters[0].stem
    paths = {k: folder / f"{dataset}.{k}" for k in ("inter", "user", "item")}
    inter, t_inter = _read_atomic(paths["inter"])
    tables: dict[str, pa.Table | None] = {}
    types = {"inter": t_inter}
    for k in ("user", "item"):
        if paths[k].is_file():
            tables[k], types[k] = _read_atomic(paths[k])
        else:
            tables[k] = None
            del paths[k]
    return RecBoleTables(inter=inter, user=tables["user"], item=tables["item"], types=types, paths=paths)


def _recbole_ratings(rb: RecBoleTables) -> pa.Table:
    p = str(rb.paths["inter"])
    ts = _parse(rb.inter, "timestamp", pa.float64(), p)
    rating = (
        _parse(rb.inter, "rating", pa.float64(), p)
        if "rating" in rb.inter.column_names
        else np.ones(rb.inter.num_rows, np.float64)
    )
    return _ratings_table(
        _strings(rb.inter, "user_id", p),
        _strings(rb.inter, "item_id", p),
        rating,
        np.floor(ts).astype(np.int64),
    )


def _read_recbole_movielens(folder: Path) -> MovieLensTables:
    rb = read_recbole(folder)
    if rb.user is None or rb.item is None:
        missing = [k for k in ("user", "item") if k not in rb.paths]
        raise DataFormatError(f"{folder}: MovieLens needs the RecBole .user and .item files; missing: {missing}")
    pu, pi = str(rb.paths["user"]), str(rb.paths["item"])
    users = pa.table(
        {
            "user_id": _strings(rb.user, "user_id", pu),
            "age": _parse(rb.user, "age", pa.int64(), pu),
            **{c: _strings(rb.user, c, pu) for c in ("gender", "occupation", "zip_code")},
        }
    )
    items = pa.table(
        {
            "item_id": _strings(rb.item, "item_id", pi),
            "release_year": _year_from_text(_strings(rb.item, "release_year", pi)),
            "genre": _first_token(_strings(rb.item, "class", pi)),
        }
    )
    return MovieLensTables(
        ratings=_recbole_ratings(rb),
        users=users,
        items=items,
        source=str(folder),
        layout="recbole",
        users_file=pu,
        items_file=pi,
    )


def read_movielens(src: str | Path) -> MovieLensTables:
    """Read a local MovieLens copy in any accepted layout (see the module docstring).

    Raises:
        DataFormatError: ``src`` does not exist, holds none of the accepted layouts, or a file is malformed.
    """
    src = Path(src).expanduser()
    if src.is_file():
        if zipfile.is_zipfile(src):
            return read_grouplens(src)
        raise DataFormatError(f"{src}: a file, but not a zip archive (expected ml-100k.zip or a folder)")
    if not src.is_dir():
        raise DataFormatError(f"{src}: no such file or folder")
    if (src / "u.data").is_file():
        return read_grouplens(src)
    if any(src.glob("*.inter")):
        return _read_recbole_movielens(src)
    if (src / "ml-100k").is_dir():
        return read_movielens(src / "ml-100k")
    if (src / ZIP_NAME).is_file():
        return read_grouplens(src / ZIP_NAME)
    raise DataFormatError(
        f"{src}: no MovieLens files found (expected u.data/u.user/u.item, RecBole *.inter/*.user/*.item, "
        f"an ml-100k/ folder or {ZIP_NAME})"
    )


def check_ml100k(tables: MovieLensTables) -> None:
    """Check by content that ``tables`` are MovieLens-100K: 100,000 ratings, 943 users, 1,682 items.

    Raises:
        DataFormatError: naming the source and the count that differs.
    """
    got = tables.counts()
    tables_n = (None, tables.users.num_rows, tables.items.num_rows)
    for what, g, t, want in zip(("ratings", "users", "items"), got, tables_n, ML100K_COUNTS):
        if g != want or (t is not None and t != want):
            detail = f"{g} in the ratings" + (f", {t} in the {what} table" if t is not None else "")
            raise DataFormatError(
                f"{tables.source}: not MovieLens-100K: {detail}, expected {want:,} {what} (truncated or other file?)"
            )


# ------------------------------------------------------------------------------------------------------
# encoding into an InteractionLog
# ------------------------------------------------------------------------------------------------------
def _entity_ids(table_ids: pa.Array | None, rating_ids: pa.Array, what: str, column: str) -> tuple[pa.Array, int]:
    """Sorted vocabulary of the ids in the entity table and the ratings, and its size.

    Raises:
        DataFormatError: ``table_ids`` (column ``column`` of file ``what``) holds an id twice; names an example.
    """
    if table_ids is not None:
        counts = pc.value_counts(table_ids)
        repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
        if len(repeated):
            raise DataFormatError(
                f"{what}: column {column!r} has {len(repeated)} duplicate value(s), e.g. {repeated[0].as_py()!r} "
                "(each id must appear once)"
            )
    universe = rating_ids if table_ids is None else pa.concat_arrays([table_ids, rating_ids])
    vocab = _vocabulary(universe)
    return vocab, len(vocab)


def _table_attribute(
    row_ids: np.ndarray, codes: np.ndarray, vocab_size: int, num_entities: int, description: str
) -> Attribute:
    values = np.zeros(num_entities + 1, dtype=np.int64)
    values[row_ids] = codes
    values[0] = 0
    return Attribute(values=values, vocab_size=int(vocab_size), description=description)


def _categorical_codes(col: pa.Array) -> tuple[np.ndarray, int]:
    vocab = _vocabulary(col)
    return _index(col, vocab), len(vocab) + 1


def movielens_log(tables: MovieLensTables) -> InteractionLog:
    """Encode MovieLens tables into an :class:`InteractionLog` with the features of the module docstring.

    Raises:
        DataFormatError: duplicate ids in the user or item table, or a genre outside :data:`GENRES`.
    """
    r = tables.ratings
    user_vocab, num_users = _entity_ids(
        tables.users.column("user_id").combine_chunks(),
        r["user_id"].combine_chunks(),
        tables.users_file or f"{tables.source} users",
        "user_id",
    )
    item_vocab, num_items = _entity_ids(
        tables.items.column("item_id").combine_chunks(),
        r["item_id"].combine_chunks(),
        tables.items_file or f"{tables.source} items",
        "item_id",
    )
    u_rows = _index(tables.users.column("user_id").combine_chunks(), user_vocab)
    i_rows = _index(tables.items.column("item_id").combine_chunks(), item_vocab)

    age = tables.users.column("age").to_numpy()
    age_bucket = np.searchsorted(_AGE_EDGES, age, side="right") + 1
    zip_first = pc.utf8_upper(pc.utf8_slice_codeunits(tables.users.column("zip_code").combine_chunks(), 0, 1))
    user_features = {
        "age": _table_attribute(u_rows, age_bucket, len(_AGE_EDGES) + 2, num_users,
                                "age bucket 1:<18 2:18-24 3:25-34 4:35-44 5:45-49 6:50-55 7:56+"),
    }  # fmt: skip
    for name, col, desc in (
        ("gender", tables.users.column("gender").combine_chunks(), "gender, alphabetical (F, M)"),
        ("occupation", tables.users.column("occupation").combine_chunks(), "occupation, alphabetical"),
        ("zip", zip_first, "first character of the zip code, alphabetical"),
    ):
        codes, size = _categorical_codes(col)
        user_features[name] = _table_attribute(u_rows, codes, size, num_users, desc)

    genre_col = tables.items.column("genre").combine_chunks()
    genre_codes = _index(genre_col, pa.array(GENRES[1:], pa.string()))
    bad = np.flatnonzero((genre_codes == 0) & ~np.isin(genre_col.to_numpy(zero_copy_only=False), ["", "unknown"]))
    if len(bad):
        raise DataFormatError(
            f"{tables.source}: item genre {genre_col[int(bad[0])].as_py()!r} (item "
            f"{tables.items.column('item_id')[int(bad[0])].as_py()}) is not a MovieLens genre {GENRES}"
        )
    year = tables.items.column("release_year").to_numpy()
    year_bucket = np.where(year > 0, np.searchsorted(_YEAR_EDGES, year, side="right") + 1, 0)
    item_features = {
        "genre": _table_attribute(i_rows, genre_codes, len(GENRES), num_items,
                                  "first listed genre, GroupLens order Action=1..Western=18; unknown=0"),
        "year": _table_attribute(i_rows, year_bucket, len(_YEAR_EDGES) + 2, num_items,
                                 "release year bucket 1:<1960 2:60s 3:70s 4:80s 5:1990-93 6:1994 .. 10:1998+"),
    }  # fmt: skip
    return InteractionLog(
        user=_index(r["user_id"].combine_chunks(), user_vocab),
        item=_index(r["item_id"].combine_chunks(), item_vocab),
        rating=r["rating"].to_numpy().astype(np.float64),
        timestamp=r["timestamp"].to_numpy().astype(np.int64),
        num_users=num_users,
        num_items=num_items,
        user_features=user_features,
        item_features=item_features,
        source=tables.source,
    )


def recbole_log(
    tables: RecBoleTables,
    *,
    user_fields: Sequence[str] | None = None,
    item_fields: Sequence[str] | None = None,
    max_distinct_fraction: float = 0.5,
) -> InteractionLog:
    """Encode any RecBole dataset into an :class:`InteractionLog` (categorical attributes only).

    ``.inter`` needs ``user_id``, ``item_id`` and ``timestamp``; ``rating`` is optional (all 1 when absent).
    User and item attributes come from the ``.user`` / ``.item`` files when present: a ``token`` column is
    one categorical attribute (ids in alphabetical or numeric order), a ``token_seq`` column contributes its
    first token, ``float`` columns are skipped. With ``user_fields`` / ``item_fields`` = ``None``, every such
    column is used except near-identifiers (more distinct values than ``max_distinct_fraction`` of the rows,
    e.g. titles or zip codes); otherwise exactly the named columns (each must exist and be categorical).

    Raises:
        DataFormatError: a required or named column is missing, not categorical, or unparsable.
    """
    ratings = _recbole_ratings(tables)
    feats: dict[str, dict[str, Attribute]] = {}
    nums: dict[str, tuple[pa.Array, int]] = {}
    for kind, table, wanted in (("user", tables.user, user_fields), ("item", tables.item, item_fields)):
        key = f"{kind}_id"
        path = str(tables.paths.get(kind, f"{kind} file"))
        ids = _strings(table, key, path) if table is not None else None
        vocab, num = _entity_ids(ids, ratings[key].combine_chunks(), path, key)
        nums[kind] = (vocab, num)
        feats[kind] = {}
        if table is None:
            if wanted:
                raise DataFormatError(f"{kind}_fields={list(wanted)}: there is no .{kind} file")
            continue
        rows = _index(ids, vocab)
        types = tables.types[kind]
        for col in wanted if wanted is not None else [c for c in table.column_names if c != key]:
            if col not in types:
                raise DataFormatError(f"{path}: column {col!r} missing (columns: {table.column_names})")
            if types[col] not in ("token", "token_seq"):
                if wanted is not None:
                    raise DataFormatError(f"{path}: column {col!r} has type {types[col]}, not token/token_seq")
                logger.info("%s: column %r (%s) skipped: not categorical", path, col, types[col])
                continue
            values = _strings(table, col, path)
            if types[col] == "token_seq":
                values = _first_token(values)
            codes, size = _categorical_codes(values)
            if wanted is None and size - 1 > max_distinct_fraction * max(table.num_rows, 1):
                logger.info("%s: column %r skipped: %d distinct values (near-identifier)", path, col, size - 1)
                continue
            if size < 2:
                continue
            desc = f"{col} ({'first token, ' if types[col] == 'token_seq' else ''}sorted vocabulary)"
            feats[kind][col] = _table_attribute(rows, codes, size, num, desc)
    return InteractionLog(
        user=_index(ratings["user_id"].combine_chunks(), nums["user"][0]),
        item=_index(ratings["item_id"].combine_chunks(), nums["item"][0]),
        rating=ratings["rating"].to_numpy().astype(np.float64),
        timestamp=ratings["timestamp"].to_numpy().astype(np.int64),
        num_users=nums["user"][1],
        num_items=nums["item"][1],
        user_features=feats["user"],
        item_features=feats["item"],
        source=str(tables.paths["inter"]),
    )


# ------------------------------------------------------------------------------------------------------
# download
# ------------------------------------------------------------------------------------------------------
def _unavailable(url: str, reason: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"MovieLens-100K could not be downloaded from {url}: {reason}. Its licence forbids redistribution, so "
        f"it is fetched on first use. Without network access, copy it here from GroupLens (ml-100k.zip, a "
        f"folder with u.data/u.user/u.item, or RecBole atomic files) and run: {PREPARE_HINT}"
    )


def _fetch(url: str, dest: Path, *, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``dest``; raises DatasetUnavailableError on network errors or a short body."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

                bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
                bar.start()
                task = bar.add_task(f"downloading {Path(url).name}", total=total)
            done = 0
            try:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if bar is not None:
                        bar.update(task, completed=done)
            finally:
                if bar is not None:
                    bar.stop()
    except urllib.error.HTTPError as exc:
        raise _unavailable(url, f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _unavailable(url, f"{type(exc).__name__}: {reason}") from exc
    except OSError as exc:
        raise _unavailable(url, f"{type(exc).__name__}: {exc}") from exc
    if total is not None and done != total:
        raise _unavailable(url, f"the download is truncated ({done} of {total} bytes)")


def download_movielens(
    url: str = ML100K_URL,
    cache_dir: str | Path | None = None,
    *,
    progress: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Return the cached ``ml-100k.zip``, downloading it first if it is not cached yet.

    The archive is streamed to a temporary file in the cache folder, checked by content (readable, 100,000
    ratings, 943 users, 1,682 items) and only then renamed to ``<cache>/movielens-100k/ml-100k.zip``.

    Args:
        url: where to download from (the GroupLens URL by default).
        cache_dir: cache root replacing the default (see :mod:`cascade_ranking.data.cache`).
        progress: show a progress bar (rich) on the console.
        timeout: socket timeout in seconds.

    Raises:
        DatasetUnavailableError: no network, an HTTP error, a truncated or corrupted download; the message
            says to run ``cascade-ranking prepare movielens-100k --src PATH`` with a local copy.
    """
    target = source_cache_dir(CACHE_NAME, cache_dir) / ZIP_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{ZIP_NAME}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        logger.info("downloading MovieLens-100K from %s to %s", url, target)
        _fetch(url, tmp, progress=progress, timeout=timeout)
        try:
            check_ml100k(read_grouplens(tmp))
        except DataFormatError as exc:
            raise _unavailable(url, f"the downloaded file is corrupted or not MovieLens-100K ({exc})") from exc
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


# ------------------------------------------------------------------------------------------------------
# the default dataset
# ------------------------------------------------------------------------------------------------------
def dataset_name(stages: int) -> str:
    """Versioned dataset name, e.g. ``"movielens-100k-v1-2stage"``."""
    return f"movielens-100k-v{DATASET_VERSION}-{stages}stage"


def movielens_provenance(tables: MovieLensTables) -> dict:
    """The ``provenance`` of a dataset built from MovieLens-100K ``tables``: source, version, layout, counts,
    licence (recorded in its ``schema.json``)."""
    ratings, users, items = tables.counts()
    return {
        "dataset": "MovieLens-100K (Harper & Konstan 2015), https://grouplens.org/datasets/movielens/100k/",
        "dataset_version": DATASET_VERSION,
        "source_layout": tables.layout,
        "source_counts": {"ratings": ratings, "users": users, "items": items},
        "licence": "MovieLens terms of use: no redistribution; downloaded from GroupLens on first use",
    }


def prepare_movielens(
    out_dir: Path,
    *,
    src: Path | None = None,
    stages: int = 2,
    seed: int = 0,
    url: str = ML100K_URL,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> DatasetSchema:
    """Build the MovieLens-100K full-stage cascade dataset in ``out_dir``.

    Args:
        out_dir: the dataset folder to write (replaced atomically if it already holds a dataset).
        src: a local copy (any layout of the module docstring); ``None`` = the cached download, fetched
            from ``url`` on first use.
        stages: 2 (4 groups x 10 candidates, keep [30, 20]) or 3 (5 x 10, keep [40, 30, 20]).
        seed: seed of the negative sampling and slot order (same seed = byte-identical files).
        url: download location when ``src`` is ``None``.
        cache_dir: cache root replacing the default.
        progress: show a download progress bar.

    Returns:
        The dataset's schema (also written to ``out_dir/schema.json``).

    Raises:
        DatasetUnavailableError: no ``src`` and the download failed (the message says what to run).
        DataFormatError: ``src`` is malformed or is not MovieLens-100K (counts differ).
        ValueError: ``stages`` is not 2 or 3, or ``seed`` is negative.
    """
    if stages not in (2, 3):
        raise ValueError(f"stages={stages}: MovieLens-100K is laid out for 2 or 3 stages")
    if src is not None:
        tables = read_movielens(src)
    else:
        cached = download_movielens(url, cache_dir, progress=progress)
        try:
            tables = read_movielens(cached)
        except DataFormatError as exc:
            raise DatasetUnavailableError(
                f"the cached MovieLens-100K archive {cached} is unreadable ({exc}); delete it to download it "
                f"again, or run: {PREPARE_HINT}"
            ) from exc
    check_ml100k(tables)
    log = movielens_log(tables)
    return build_full_stage(
        log,
        out_dir,
        name=dataset_name(stages),
        seed=seed,
        config=FullStageConfig(stages=stages, history_fields=("item_id", "genre")),
        train_defaults=TrainDefaults(batch_size=256, passes=3),
        provenance=movielens_provenance(tables),
    )
