"""The serving commands as a user runs them: `recommend` (Parquet in, Parquet out), `export`, and `serve` started on
loopback and sent real HTTP requests — valid ones and every kind of bad one, each a clear 4xx, the server alive."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

pytest.importorskip("faiss")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from cascade_ranking.cli import app  # noqa: E402
from cascade_ranking.training.config import TrainConfig  # noqa: E402
from cascade_ranking.training.loop import train  # noqa: E402
from conftest import make_tiny_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    make_tiny_dataset(root / "data")
    config = TrainConfig(data=root / "data", device="cpu", method="lcron")
    return train(config, data=root / "data", run_dir=root / "run").run_dir


def _test_file(run: Path) -> Path:
    config = json.loads((run / "config.json").read_text())
    return Path(config["data"]) / "part-02.parquet"  # the tiny dataset's test partition (a valid request file)


def test_recommend_command_writes_parquet(run, tmp_path):
    out = tmp_path / "rec.parquet"
    args = ["recommend", str(run), "--requests", str(_test_file(run)), "--k", "3", "--keep", "20,6", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pq.read_table(out).to_pydict()
    assert set(table) == {"request_id", "rank", "item.item_id", "score.retrieval", "score.prerank"}
    assert len(table["rank"]) == 50 * 3 and sorted(set(table["rank"])) == [1, 2, 3]
    prerank = np.array(table["score.prerank"]).reshape(50, 3)
    assert (np.diff(prerank, axis=1) <= 0).all()  # best first by the last stage


def test_recommend_command_errors_are_one_line(run, tmp_path):
    out = tmp_path / "rec.parquet"
    result = runner.invoke(
        app, ["recommend", str(run), "--requests", str(_test_file(run)), "--k", "0", "--out", str(out)]
    )
    assert result.exit_code == 2 and "positive integer" in result.output and not out.exists()
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    result = runner.invoke(app, ["recommend", str(run), "--requests", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "not a readable Parquet file" in result.output and not out.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, body: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(run):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cascade_ranking", "serve", str(run), "--port", str(port), "--keep", "20,6"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if _call(base + "/health")[0] == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.stdout.read().decode()[-3000:] if proc.stdout else ''}")
        time.sleep(0.3)
    yield base, proc
    proc.terminate()
    proc.wait(timeout=30)


VALID = {"user": {"user_id": 3}, "context": {"hour": 5}, "history": {"item_id": [1, 2], "genre": [2, 3]}, "k": 4}


def _post(base: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _call(base + "/recommend", data)


def test_http_valid_request(server):
    base, _ = server
    status, answer = _post(base, VALID)
    assert status == 200, answer
    items = answer["items"]
    assert len(items) == 4 and not {1, 2} & {i["item_id"] for i in items}  # history excluded
    assert all(set(i["scores"]) == {"retrieval", "prerank"} for i in items)
    prerank = [i["scores"]["prerank"] for i in items]
    assert prerank == sorted(prerank, reverse=True)
    assert set(answer["latency_ms"]) == {"retrieval", "prerank"}
    status, meta = _call(base + "/metadata")
    assert status == 200 and meta["keep"] == [20, 6] and meta["catalogue_size"] >= 20
    assert meta["fields"]["user.user_id"]["vocab_size"] == 20


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b'{"user": {"user_id": 3', 400, "malformed JSON"),
        (b"[1, 2]", 422, "valid dictionary"),
        ({**VALID, "user": {"user_id": 999}}, 422, "user.user_id=999"),  # an unknown user
        ({**VALID, "user": {"user_id": -1}}, 422, "user.user_id=-1"),
        ({**VALID, "user": {"user_id": "abc"}}, 422, "user.user_id: Input should be a valid integer"),
        ({**VALID, "k": 0}, 422, "k=0: the number of items to recommend must be a positive integer"),
        ({**VALID, "k": -5}, 422, "positive integer"),
        ({**VALID, "k": 100_000}, 422, "larger than the catalogue"),
        ({**VALID, "k": 7}, 422, "exceeds what the last stage keeps (6"),
        ({**VALID, "context": {}}, 422, "'context.hour' missing"),
        ({**VALID, "user": {"user_id": 3, "colour": 1}}, 422, "unknown fields ['user.colour']"),
        ({**VALID, "history": {"item_id": [1] * 9, "genre": [1] * 9}}, 422, "reads at most 5"),
        ({**VALID, "surprise": 1}, 422, "surprise: Extra inputs are not permitted"),
    ],
)
def test_http_bad_requests_are_clear_4xx_and_the_server_lives(server, body, status, message):
    base, proc = server
    got, answer = _post(base, body)
    assert got == status, answer
    assert message in answer["detail"], answer
    assert proc.poll() is None
    assert _post(base, VALID)[0] == 200  # still answering


def test_export_reproduces_the_run_and_serves(run, tmp_path):
    """The export's programs give the run's scores to 1e-5 on the test requests; `recommend` reads an export."""
    from cascade_ranking.serving import read_requests
    from cascade_ranking.serving.export import load_recommender

    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(run), str(out), "--keep", "20,6"])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file() and (out / "prerank.scorer.pt2").is_file()
    from_run, from_export = load_recommender(run, keep=[20, 6]), load_recommender(out)
    assert from_export.keep == (20, 6)
    requests = read_requests(_test_file(run), from_run.schema)
    a, b = from_run.recommend(requests, 6), from_export.recommend(requests, 6)
    np.testing.assert_array_equal(a.item, b.item)
    for stage in a.scores:
        np.testing.assert_allclose(b.scores[stage], a.scores[stage], rtol=0, atol=1e-5)
    rec = tmp_path / "rec.parquet"
    args = ["recommend", str(out), "--requests", str(_test_file(run)), "--k", "2", "--out", str(rec)]
    assert runner.invoke(app, args).exit_code == 0
    assert pq.read_table(rec).num_rows == 100


def test_evaluate_full_catalogue_command(run):
    result = runner.invoke(app, ["evaluate", str(run), "--catalogue", "full", "--k", "5", "--keep", "20,6"])
    assert result.exit_code == 0, result.output
    for column in ("catalogue_recall@5", "catalogue_ndcg@5", "catalogue_recall/retrieval", "latency_ms/prerank"):
        assert column in result.stdout
    bad = runner.invoke(app, ["evaluate", str(run), "--catalogue", "everything"])
    assert bad.exit_code == 2 and "expected logged or full" in bad.output


def test_benchmark_with_full_catalogue_columns(tmp_path):
    make_tiny_dataset(tmp_path / "data")
    args = ["benchmark", "--data", str(tmp_path / "data"), "--methods", "lcron", "--repeats", "1",
            "--out", str(tmp_path / "bench"), "--device", "cpu", "--catalogue", "full"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    runs = json.loads((tmp_path / "bench" / "results.json").read_text())["runs"]
    lcron = next(r for r in runs if r["row"] == "lcron")
    assert 0 <= lcron["catalogue_recall@10"] <= lcron["catalogue_recall/retrieval"] <= 1
    assert (tmp_path / "bench" / "runs" / "lcron-seed0" / "catalogue_metrics.json").is_file()
