"""MovieLens readers (GroupLens and RecBole layouts), the download path, and the user cache."""

from __future__ import annotations

import http.server
import io
import socket
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from cascade_ranking.data import cache
from cascade_ranking.data.store import open_dataset
from cascade_ranking.datasets import movielens
from cascade_ranking.datasets.movielens import (
    GENRES,
    PREPARE_HINT,
    DataFormatError,
    DatasetUnavailableError,
    check_ml100k,
    download_movielens,
    movielens_log,
    prepare_movielens,
    read_grouplens,
    read_movielens,
    read_recbole,
    recbole_log,
)

# ------------------------------------------------------------------------------------------------------
# a GroupLens-layout copy written from the RecBole test copy (independent of the library's readers)
# ------------------------------------------------------------------------------------------------------


def _recbole_frames(src: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    def read(name):
        df = pd.read_csv(src / f"ml-100k.{name}", sep="\t", dtype=str, keep_default_na=False, quoting=3)
        df.columns = [c.split(":")[0] for c in df.columns]
        return df

    return read("inter"), read("user"), read("item")


def _grouplens_bytes(src: Path, *, drop_ratings: int = 0) -> dict[str, bytes]:
    inter, user, item = _recbole_frames(src)
    inter = inter.iloc[: len(inter) - drop_ratings]
    data = inter[["user_id", "item_id", "rating", "timestamp"]].to_csv(sep="\t", header=False, index=False)
    users = user[["user_id", "age", "gender", "occupation", "zip_code"]].to_csv(sep="|", header=False, index=False)
    year = item["release_year"]
    flags = pd.DataFrame({g: item["class"].str.split(" ").apply(lambda t, g=g: int(g in t)) for g in GENRES})
    gl_item = pd.concat(
        [
            item["item_id"],
            item["movie_title"],
            year.where(year.str.fullmatch(r"\d{4}"), "").map(lambda y: f"01-Jan-{y}" if y else ""),
            pd.Series([""] * len(item)),
            pd.Series(["http://example.invalid/"] * len(item)),
            flags,
        ],
        axis=1,
    )
    items = gl_item.to_csv(sep="|", header=False, index=False)
    return {"u.data": data.encode(), "u.user": users.encode(), "u.item": items.encode("latin-1")}


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(f"ml-100k/{name}", content)
    return buf.getvalue()


@pytest.fixture(scope="module")
def grouplens_files(ml100k_src) -> dict[str, bytes]:
    return _grouplens_bytes(ml100k_src)


@pytest.fixture(scope="module")
def grouplens_dir(grouplens_files, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("grouplens") / "ml-100k"
    d.mkdir()
    for name, content in grouplens_files.items():
        (d / name).write_bytes(content)
    return d


@pytest.fixture(scope="module")
def grouplens_zip(grouplens_files) -> bytes:
    return _zip_bytes(grouplens_files)


# ------------------------------------------------------------------------------------------------------
# readers
# ------------------------------------------------------------------------------------------------------
def test_recbole_copy_has_ml100k_counts(ml100k_src):
    tables = read_movielens(ml100k_src)
    assert tables.layout == "recbole"
    assert tables.counts() == (100_000, 943, 1_682)
    assert (tables.users.num_rows, tables.items.num_rows) == (943, 1_682)
    check_ml100k(tables)


def test_grouplens_folder_zip_and_parent_folder_read_the_same(grouplens_dir, grouplens_zip, tmp_path):
    zpath = tmp_path / "ml-100k.zip"
    zpath.write_bytes(grouplens_zip)
    a = read_movielens(grouplens_dir)
    b = read_movielens(zpath)
    c = read_movielens(grouplens_dir.parent)  # a folder holding ml-100k/
    assert a.layout == b.layout == c.layout == "grouplens"
    assert a.counts() == (100_000, 943, 1_682)
    for other in (b, c):
        assert a.ratings.equals(other.ratings) and a.users.equals(other.users) and a.items.equals(other.items)


def test_both_layouts_give_the_same_log(ml100k_src, grouplens_dir):
    rb = movielens_log(read_movielens(ml100k_src))
    gl = movielens_log(read_movielens(grouplens_dir))
    for name in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(rb, name), getattr(gl, name))
    assert (rb.num_users, rb.num_items) == (gl.num_users, gl.num_items) == (943, 1_682)
    for table in ("user_features", "item_features"):
        ta, tb = getattr(rb, table), getattr(gl, table)
        assert list(ta) == list(tb)
        for k in ta:
            np.testing.assert_array_equal(ta[k].values, tb[k].values, err_msg=k)
            assert ta[k].vocab_size == tb[k].vocab_size


def test_movielens_features_by_hand(ml100k_src):
    log = movielens_log(read_movielens(ml100k_src))
    inter, user, item = _recbole_frames(ml100k_src)
    # ids keep the original numbers (1..943, 1..1682)
    np.testing.assert_array_equal(log.user, inter["user_id"].astype(int))
    np.testing.assert_array_equal(log.item, inter["item_id"].astype(int))
    np.testing.assert_array_equal(log.rating, inter["rating"].astype(float))
    uf, itf = log.user_features, log.item_features
    # user 1: 24, M, technician, 85711; user 2: 53, F, other, 94043; user 74: zip T8H1N
    assert uf["age"].values[1] == 2 and uf["age"].values[2] == 6
    assert uf["gender"].values[1] == 2 and uf["gender"].values[2] == 1  # F=1, M=2
    occupations = sorted(user["occupation"].unique())
    assert uf["occupation"].values[1] == occupations.index("technician") + 1
    zips = sorted({z[0].upper() for z in user["zip_code"]})
    assert uf["zip"].values[1] == zips.index("8") + 1 and uf["zip"].values[74] == zips.index("T") + 1
    assert uf["age"].vocab_size == 8 and uf["occupation"].vocab_size == 22
    # age buckets against an independent formula
    ages = user["age"].astype(int).to_numpy()
    expect = 1 + (ages >= 18) + (ages >= 25) + (ages >= 35) + (ages >= 45) + (ages >= 50) + (ages >= 56)
    np.testing.assert_array_equal(uf["age"].values[user["user_id"].astype(int)], expect)
    # item 1: Toy Story 1995, Animation Children's Comedy; 267: unknown everything; 1412: year "V"
    assert itf["genre"].values[1] == GENRES.index("Animation")
    assert itf["year"].values[1] == 7
    assert itf["genre"].values[267] == 0 and itf["year"].values[267] == 0 and itf["year"].values[1412] == 0
    years = pd.to_numeric(item["release_year"], errors="coerce").to_numpy()
    edges = [1960, 1970, 1980, 1990, 1994, 1995, 1996, 1997, 1998]
    want = np.where(np.isnan(years), 0, 1 + sum((years >= e).astype(int) for e in edges))
    np.testing.assert_array_equal(itf["year"].values[item["item_id"].astype(int)], want)
    assert (log.user_features["age"].values[0], log.item_features["genre"].values[0]) == (0, 0)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_missing_file_names_it(grouplens_dir, tmp_path):
    d = tmp_path / "gl"
    d.mkdir()
    for name in ("u.data", "u.item"):
        (d / name).write_bytes((grouplens_dir / name).read_bytes())
    with pytest.raises(DataFormatError, match=r"u\.user"):
        read_movielens(d)
    with pytest.raises(DataFormatError, match="no such file or folder"):
        read_movielens(tmp_path / "nowhere")
    with pytest.raises(DataFormatError, match="no MovieLens files"):
        read_movielens(tmp_path)


def test_unparsable_value_names_file_and_column(grouplens_dir, tmp_path):
    d = tmp_path / "gl"
    d.mkdir()
    for name in ("u.user", "u.item"):
        (d / name).write_bytes((grouplens_dir / name).read_bytes())
    _write(d / "u.data", "1\t2\t3\t881250949\n1\t3\tfour\t881250950\n")
    with pytest.raises(DataFormatError, match=r"u\.data.*'rating'"):
        read_grouplens(d)
    _write(d / "u.data", "1\t2\t3\t881250949\n1\t3\t4\n")  # a short line
    with pytest.raises(DataFormatError, match=r"u\.data"):
        read_grouplens(d)


def test_recbole_errors_name_file_and_column(tmp_path):
    inter = _write(tmp_path / "a" / "x.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n")
    with pytest.raises(DataFormatError, match=r"x\.inter.*'timestamp'"):
        recbole_log(read_recbole(inter.parent))
    _write(tmp_path / "b" / "x.inter", "user_id\titem_id:token\ttimestamp:float\n1\t2\t3\n")
    with pytest.raises(DataFormatError, match=r"x\.inter.*'user_id'"):
        read_recbole(tmp_path / "b")
    _write(tmp_path / "c" / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\tyesterday\n")
    with pytest.raises(DataFormatError, match=r"x\.inter.*'timestamp'"):
        recbole_log(read_recbole(tmp_path / "c"))
    _write(tmp_path / "d" / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n")
    _write(tmp_path / "d" / "y.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n")
    with pytest.raises(DataFormatError, match=r"exactly one"):
        read_recbole(tmp_path / "d")


def test_recbole_reader_uses_what_is_present(tmp_path):
    d = tmp_path / "toy"
    _write(d / "toy.inter", "user_id:token\titem_id:token\ttimestamp:float\nu2\tb\t20\nu1\ta\t10.7\nu1\tc\t30\n")
    log = recbole_log(read_recbole(d))
    assert (log.num_users, log.num_items) == (2, 3)
    assert log.user_features == {} and log.item_features == {}
    np.testing.assert_array_equal(log.user, [2, 1, 1])  # alphabetical ids: u1=1, u2=2
    np.testing.assert_array_equal(log.item, [2, 1, 3])
    np.testing.assert_array_equal(log.timestamp, [20, 10, 30])
    np.testing.assert_array_equal(log.rating, [1.0, 1.0, 1.0])  # no rating column
    _write(
        d / "toy.item",
        "item_id:token\tbrand:token\ttags:token_seq\tprice:float\n"
        "a\tacme\tred big\t1.5\nb\tzeta\tblue\t2\nc\tacme\t\t3\nd\tzeta\tred\t4\n",
    )
    log = recbole_log(read_recbole(d))
    assert log.num_items == 4  # item d has no rating but is in the item table
    assert sorted(log.item_features) == ["brand", "tags"]  # price (float) skipped
    np.testing.assert_array_equal(log.item_features["brand"].values, [0, 1, 2, 1, 2])
    np.testing.assert_array_equal(log.item_features["tags"].values, [0, 2, 1, 0, 2])  # first token; "" = 0
    assert log.item_features["tags"].vocab_size == 3
    only = recbole_log(read_recbole(d), item_fields=["brand"])
    assert list(only.item_features) == ["brand"]
    with pytest.raises(DataFormatError, match="'price'"):
        recbole_log(read_recbole(d), item_fields=["price"])
    with pytest.raises(DataFormatError, match="'colour'"):
        recbole_log(read_recbole(d), item_fields=["colour"])


def test_other_dataset_is_not_ml100k(grouplens_files, tmp_path):
    files = dict(grouplens_files)
    lines = files["u.data"].split(b"\n")
    files["u.data"] = b"\n".join(lines[:-11] + [b""])
    z = tmp_path / "ml-100k.zip"
    z.write_bytes(_zip_bytes(files))
    tables = read_movielens(z)
    assert tables.counts()[0] == 99_990
    with pytest.raises(DataFormatError, match=r"not MovieLens-100K: 99990 in the ratings, expected 100,000"):
        check_ml100k(tables)


# ------------------------------------------------------------------------------------------------------
# the download path, against a loopback HTTP server
# ------------------------------------------------------------------------------------------------------
class _Server:
    """Serves fixed byte strings by path; counts requests; ``/short.zip`` promises more than it sends."""

    def __init__(self, routes: dict[str, bytes]) -> None:
        self.routes = routes
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server API)
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                declared = len(body) * 2 if self.path == "/short.zip" else len(body)
                self.send_header("Content-Length", str(declared))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def server(grouplens_zip, grouplens_files):
    fewer = dict(grouplens_files)
    fewer["u.data"] = b"\n".join(fewer["u.data"].split(b"\n")[:-101] + [b""])
    routes = {
        "/ml-100k.zip": grouplens_zip,
        "/truncated.zip": grouplens_zip[: len(grouplens_zip) // 2],
        "/short.zip": grouplens_zip[: len(grouplens_zip) // 2],
        "/fewer.zip": _zip_bytes(fewer),
    }
    with _Server(routes) as s:
        yield s


def _cache_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_download_caches_atomically_and_once(server, grouplens_zip, tmp_path, no_proxy):
    path = download_movielens(f"{server.url}/ml-100k.zip", tmp_path, progress=True)
    assert path == tmp_path / "movielens-100k" / "ml-100k.zip"
    assert path.read_bytes() == grouplens_zip
    assert _cache_files(tmp_path) == ["ml-100k.zip"]  # no temporary file left behind
    again = download_movielens(f"{server.url}/ml-100k.zip", tmp_path)
    assert again == path and server.hits["/ml-100k.zip"] == 1


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ("/truncated.zip", "corrupted or not MovieLens-100K"),
        ("/short.zip", "IncompleteRead|truncated"),
        ("/fewer.zip", "99900 in the ratings, expected 100,000"),
        ("/missing.zip", "404"),
    ],
)
def test_bad_download_is_a_clear_error_and_leaves_no_file(server, tmp_path, no_proxy, route, reason):
    with pytest.raises(DatasetUnavailableError, match=reason) as err:
        download_movielens(f"{server.url}{route}", tmp_path)
    assert PREPARE_HINT in str(err.value)
    assert _cache_files(tmp_path) == []


def test_no_network_error_says_what_to_run(tmp_path, no_proxy):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DatasetUnavailableError) as err:
        prepare_movielens(tmp_path / "out", url=f"http://127.0.0.1:{port}/ml-100k.zip", cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "cascade-ranking prepare movielens-100k --src PATH" in msg
    assert f"127.0.0.1:{port}" in msg
    assert not (tmp_path / "out").exists()


def test_corrupted_cache_says_to_delete_it(tmp_path):
    cached = tmp_path / "movielens-100k" / "ml-100k.zip"
    cached.parent.mkdir()
    cached.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DatasetUnavailableError, match="delete it") as err:
        prepare_movielens(tmp_path / "out", url="http://127.0.0.1:9/never-fetched.zip", cache_dir=tmp_path)
    assert str(cached) in str(err.value) and PREPARE_HINT in str(err.value)


def test_prepare_from_download_equals_prepare_from_recbole_copy(server, ml100k_dataset, tmp_path, no_proxy):
    """The downloaded GroupLens zip and the RecBole copy build byte-identical partition files."""
    out = tmp_path / "ds"
    schema = prepare_movielens(out, url=f"{server.url}/ml-100k.zip", cache_dir=tmp_path / "cache", seed=0)
    assert schema.provenance["source_layout"] == "grouplens"
    assert schema.provenance["source_counts"] == {"ratings": 100_000, "users": 943, "items": 1_682}
    for p in schema.partitions:
        assert (out / p.file_name).read_bytes() == (ml100k_dataset / p.file_name).read_bytes(), p.name
    assert pq.read_metadata(out / schema.partitions[0].file_name).num_rows == schema.partitions[0].num_requests


# ------------------------------------------------------------------------------------------------------
# cache paths
# ------------------------------------------------------------------------------------------------------
def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CASCADE_RANKING_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "explicit"
    monkeypatch.setenv("CASCADE_RANKING_CACHE", "")
    assert cache.cache_dir() == tmp_path / "xdg" / "cascade-ranking"
    monkeypatch.delenv("CASCADE_RANKING_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "cascade-ranking"
    assert cache.source_cache_dir("movielens-100k", tmp_path) == tmp_path / "movielens-100k"
    with pytest.raises(ValueError, match="name="):
        cache.source_cache_dir("../x")
    assert not (tmp_path / "home").exists()  # nothing is created


def test_source_cache_dir_defaults_to_the_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("CASCADE_RANKING_CACHE", str(tmp_path / "root"))
    assert cache.source_cache_dir("movielens-100k") == tmp_path / "root" / "movielens-100k"


def test_train_without_data_or_network_says_which_command_to_run(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from cascade_ranking.cli import app

    monkeypatch.setenv("CASCADE_RANKING_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CASCADE_RANKING_MOVIELENS_SRC", raising=False)
    monkeypatch.setenv("CASCADE_RANKING_MOVIELENS_URL", "http://127.0.0.1:9/ml-100k.zip")  # nothing listens
    monkeypatch.setattr(movielens, "local_copies", lambda: [])
    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == 2
    assert "cascade-ranking prepare movielens-100k --src PATH" in result.output


def test_offline_the_default_dataset_comes_from_a_local_copy(monkeypatch, tmp_path, ml100k_src):
    from cascade_ranking.cli import default_dataset_dir, resolve_data

    monkeypatch.setenv("CASCADE_RANKING_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CASCADE_RANKING_MOVIELENS_SRC", raising=False)
    monkeypatch.setenv("CASCADE_RANKING_MOVIELENS_URL", "http://127.0.0.1:9/ml-100k.zip")  # nothing listens
    monkeypatch.setattr(movielens, "local_copies", lambda: [ml100k_src])
    assert resolve_data(None, 2) == default_dataset_dir(2)
    assert open_dataset(default_dataset_dir(2)).name == movielens.dataset_name(2)


def test_local_copies_finds_shared_data_beside_the_working_directory(monkeypatch, tmp_path):
    (tmp_path / "shared" / "data" / "ml-100k").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert (tmp_path / "shared" / "data" / "ml-100k").resolve() in movielens.local_copies()
