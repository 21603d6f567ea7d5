"""KuaiRand-Pure conversion from a small fixture in the published column layout (written here; no network).

Errors: a missing file, a missing column, a wrong checksum, a truncated archive each give one line naming the
file and field, and leave nothing half-written behind.
"""

from __future__ import annotations

import csv
import hashlib
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cascade_ranking.data.store import open_dataset, read_partition
from cascade_ranking.datasets import kuairand as kr
from cascade_ranking.datasets.ranktower_sampling import FitConfig

SMALL_FIT = FitConfig(epochs=1, batch_size=64, emb_dim=4, hidden=16, negatives=4)
CONFIG = replace(
    kr.KUAIRAND_SAMPLING,
    min_impressions=40,
    min_positives=5,
    candidate_samples=5,
    random_samples=5,
    keep=12,
    history_length=8,
    retriever=SMALL_FIT,
    ranker=SMALL_FIT,
)
LOG_HEADER = ["user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like", "is_follow", "is_comment",
              "is_forward", "is_hate", "long_view", "play_time_ms", "duration_ms", "profile_stay_time",
              "comment_stay_time", "is_profile_enter", "is_rand", "tab"]  # fmt: skip
USER_HEADER = ["user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
               "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range", "friend_user_num",
               "friend_user_num_range", "register_days", "register_days_range",
               *(f"onehot_feat{i}" for i in range(18))]  # fmt: skip
VIDEO_HEADER = ["video_id", "author_id", "video_type", "upload_dt", "upload_type", "visible_status", "video_duration",
                "server_width", "server_height", "music_id", "music_type", "tag"]  # fmt: skip
START_MS = 1649376000000  # 2022-04-08 00:00 UTC
DAY_MS = 86_400_000


def write_csv(path: Path, header, rows, drop: str | None = None) -> None:
    keep = [i for i, h in enumerate(header) if h != drop]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([header[i] for i in keep])
        w.writerows([[r[i] for i in keep] for r in rows])


def write_fixture(folder: Path, *, seed: int = 0, drop: tuple[str, str] | None = None) -> Path:
    """8 users (7 active, 1 with too few impressions) x 60 videos over the 30 days of the standard logs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    users, videos = [17387 + 3 * u for u in range(8)], [1000 + 7 * v for v in range(60)]
    rows = [[], []]
    for k, user in enumerate(users):
        n = 20 if k == 7 else 80
        for t in np.sort(rng.integers(0, 30 * DAY_MS, n)):
            fb = (rng.random(8) < [0.4, 0.1, 0.02, 0.02, 0.02, 0.1, 0.3, 0.05]).astype(int)
            ms = START_MS + int(t)
            part = 0 if ms < START_MS + 14 * DAY_MS else 1
            rows[part].append([user, int(rng.choice(videos)), 20220408, 400, ms, fb[0], fb[1], fb[2], fb[3], fb[4],
                               fb[5], fb[6], 1000, 2000, 0, 0, fb[7], 0, 1])  # fmt: skip
    for name, part in zip(kr.LOG_FILES, rows):
        write_csv(folder / name, LOG_HEADER, part, drop[1] if drop and drop[0] == name else None)
    user_rows = [[u, rng.choice(["high_active", "full_active", "UNKNOWN"]), 0, 0, int(rng.integers(0, 2)),
                  int(rng.integers(0, 300)), "(0,10]", int(rng.integers(0, 900)), "[1,10)", 0, "0",
                  int(rng.integers(10, 3000)), "730+", *rng.integers(0, 3, 18).tolist()] for u in users]  # fmt: skip
    write_csv(folder / kr.USER_FILE, USER_HEADER, user_rows, drop[1] if drop and drop[0] == kr.USER_FILE else None)
    video_rows = [[v, 441, rng.choice(["NORMAL", "AD"]), "2020-07-08", "ShortImport", 1,
                   float(rng.integers(3000, 60000)), 720, 1280, 989, int(rng.integers(0, 5)),
                   ",".join(map(str, rng.integers(0, 9, 2).tolist()))] for v in videos]  # fmt: skip
    write_csv(folder / kr.VIDEO_FILE, VIDEO_HEADER, video_rows, drop[1] if drop and drop[0] == kr.VIDEO_FILE else None)
    return folder


def make_archive(folder: Path, path: Path) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f"{kr.DATA_DIR}/{f.name}")
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_read_log_sums_the_feedback_and_bucketises_continuous_features(tmp_path):
    folder = write_fixture(tmp_path / "src")
    log = kr.read_kuairand_log(folder)
    assert log.num_users == 8 and log.num_items == 60 and len(log.user) == 7 * 80 + 20
    raw = np.concatenate([np.genfromtxt(folder / f, delimiter=",", names=True) for f in kr.LOG_FILES])
    want = sum(raw[c] for c in kr.FEEDBACK_COLUMNS)
    order = np.lexsort((raw["time_ms"], raw["user_id"]))
    got_order = np.lexsort((log.timestamp, log.user))
    np.testing.assert_array_equal(np.sort(log.rating[got_order]), np.sort(want[order]))
    assert log.rating.sum() == want.sum() and set(np.unique(log.rating)) <= set(range(8))
    dur = log.item_features["video_duration"]
    assert dur.vocab_size <= kr.N_BINS + 1 and dur.values[0] == 0
    counts = np.bincount(dur.values[1:])[1:]
    assert counts.max() - counts.min() <= 2  # equal-frequency bins of 60 videos
    assert log.item_features["tag"].vocab_size <= 10


def test_prepare_from_a_folder_builds_the_full_stage_dataset(tmp_path):
    folder = write_fixture(tmp_path / "src")
    out = tmp_path / "data"
    built = kr.build_kuairand_pure(out, src=folder, cache_dir=tmp_path / "cache", config=CONFIG, threads=1)
    schema = open_dataset(out)
    assert schema.name == "kuairand-pure" and schema.provenance["feedback_columns"] == list(kr.FEEDBACK_COLUMNS)
    assert built.source == folder
    users = set()
    for part in schema.partitions:
        a = read_partition(out, schema, part)
        imp = a["stage"] == 2
        assert (a["label"][~imp & a["mask"]] == 0).all()
        assert (a["label"][imp] >= 1).all() and (a["label"][imp] <= 8).all()  # 1 + up to 7 signals
        users |= set(a["user.user_id"].tolist())
    assert len(users) == 7  # the 20-impression user is filtered out
    assert {p.role for p in schema.partitions} == {"train", "valid", "test"}


def test_prepare_from_the_archive_checks_the_checksum_and_extracts(tmp_path):
    folder = write_fixture(tmp_path / "src")
    drop = tmp_path / "drop"
    drop.mkdir()
    md5 = make_archive(folder, drop / kr.ARCHIVE_NAME)
    out = tmp_path / "data"
    kr.build_kuairand_pure(out, src=drop, cache_dir=tmp_path / "cache", config=CONFIG, md5=md5, threads=1)
    assert (out / "schema.json").is_file()
    assert sorted(p.name for p in (tmp_path / "cache" / kr.CACHE_NAME / "data").iterdir()) == sorted(
        [*kr.LOG_FILES, kr.USER_FILE, kr.VIDEO_FILE]
    )


@pytest.mark.parametrize(
    ("drop", "match"),
    [
        ((kr.USER_FILE, None), f"{kr.USER_FILE}: file not found"),
        ((kr.LOG_FILES[1], "is_like"), f"{kr.LOG_FILES[1]}: column 'is_like' is missing"),
        ((kr.VIDEO_FILE, "tag"), f"{kr.VIDEO_FILE}: column 'tag' is missing"),
    ],
)
def test_a_missing_file_or_column_is_named_and_nothing_is_written(tmp_path, drop, match):
    folder = write_fixture(tmp_path / "src", drop=drop if drop[1] else None)
    if drop[1] is None:
        (folder / drop[0]).unlink()
    out = tmp_path / "data"
    with pytest.raises(kr.KuaiRandError, match=match) as err:
        kr.build_kuairand_pure(out, src=folder, cache_dir=tmp_path / "cache", config=CONFIG, threads=1)
    assert "\n" not in str(err.value)
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_wrong_checksum_is_named_and_nothing_is_extracted(tmp_path):
    folder = write_fixture(tmp_path / "src")
    drop = tmp_path / "drop"
    drop.mkdir()
    make_archive(folder, drop / kr.ARCHIVE_NAME)
    with pytest.raises(kr.KuaiRandError, match=rf"{kr.ARCHIVE_NAME}: md5 [0-9a-f]+ does not match the published"):
        kr.build_kuairand_pure(tmp_path / "data", src=drop, cache_dir=tmp_path / "cache", config=CONFIG)
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache" / kr.CACHE_NAME / "data").exists()


def test_a_truncated_archive_is_named_and_nothing_is_extracted(tmp_path):
    folder = write_fixture(tmp_path / "src")
    full = tmp_path / "full.tar.gz"
    make_archive(folder, full)
    drop = tmp_path / "drop"
    drop.mkdir()
    cut = drop / kr.ARCHIVE_NAME
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    md5 = hashlib.md5(cut.read_bytes(), usedforsecurity=False).hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(kr.KuaiRandError, match=rf"{kr.ARCHIVE_NAME}: truncated or not a gzip tar archive") as err:
        kr.build_kuairand_pure(tmp_path / "data", src=drop, cache_dir=cache, config=CONFIG, md5=md5)
    assert "\n" not in str(err.value)
    data = cache / kr.CACHE_NAME
    assert not (tmp_path / "data").exists() and (not data.exists() or list(data.iterdir()) == [])


def test_an_archive_without_a_file_names_it(tmp_path):
    folder = write_fixture(tmp_path / "src")
    (folder / kr.VIDEO_FILE).unlink()
    archive = tmp_path / kr.ARCHIVE_NAME
    make_archive(folder, archive)
    with pytest.raises(kr.KuaiRandError, match=f"has no {kr.DATA_DIR}/{kr.VIDEO_FILE}"):
        kr.extract_archive(archive, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_download_failure_names_the_url_and_suggests_src(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(kr.urllib.request, "urlopen", refuse)
    with pytest.raises(kr.KuaiRandError, match="download failed.*--src DIR"):
        kr.fetch_archive(tmp_path / "cache")
    assert list((tmp_path / "cache" / kr.CACHE_NAME).iterdir()) == []


def test_cli_prepare_kuairand_pure_reports_a_missing_column_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cascade_ranking.cli import app

    monkeypatch.setenv("CASCADE_RANKING_CACHE", str(tmp_path / "cache"))
    folder = write_fixture(tmp_path / "src", drop=(kr.USER_FILE, "register_days"))
    out = tmp_path / "data"
    result = CliRunner().invoke(app, ["prepare", "kuairand-pure", "--src", str(folder), "--out", str(out)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any(f"{kr.USER_FILE}: column 'register_days' is missing" in line for line in lines), result.output
    assert not out.exists()
