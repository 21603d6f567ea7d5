"""KuaiRand-Pure, the paper's KuaiRand data, as a RankTower full-stage pre-ranking dataset.

KuaiRand (Gao et al., CIKM 2022; Kuaishou; CC BY-SA 4.0): logs of a short-video app with 12 feedback signals
per impression. RankTower (Yan & Li 2023, Sec. 5.1.1) evaluates on KuaiRand; this module converts the official
**KuaiRand-Pure** archive (zenodo.org/records/10439422, ``KuaiRand-Pure.tar.gz``, md5
``0820331067a3784d9691136f772b35a7``) into our request-list store through the full-stage sampler of
:mod:`cascade_ranking.datasets.ranktower_sampling`.

**Files and columns read** (names as in the dataset's README, GitHub ``chongminggao/KuaiRand``), all under
``KuaiRand-Pure/data/``:

* the *standard* logs ``log_standard_4_08_to_4_21_pure.csv`` and ``log_standard_4_22_to_5_08_pure.csv`` (the
  random-exposure log ``log_random_4_22_to_5_08_pure.csv`` is not a production funnel, so it is not used):
  ``user_id``, ``video_id``, ``time_ms`` and the binary positive feedback :data:`FEEDBACK_COLUMNS`
  (``is_click``, ``is_like``, ``is_follow``, ``is_comment``, ``is_forward``, ``long_view``,
  ``is_profile_enter``; ``is_hate`` is negative feedback and is not summed);
* ``user_features_pure.csv``: ``user_id`` and :data:`USER_CATEGORICAL` (ids) and :data:`USER_CONTINUOUS`
  (bucketised into equal-frequency bins, RankTower Sec. 3.2);
* ``video_features_basic_pure.csv``: ``video_id``, :data:`VIDEO_CATEGORICAL` (``tag``: its first tag) and
  :data:`VIDEO_CONTINUOUS` (bucketised).

**Samples** (RankTower Sec. 4.1-4.2, 5.1.1): every logged row is an impression; its feedback is the *sum* of
the binary feedback labels (the paper: "we simply aggregate them by summing the labels"), its hard label
``1 + sum`` (the impression label plus the feedback); users with at least 100 impressions and 20 positive
feedbacks (an impression with at least one positive signal) are kept; each user's requests are split 70/10/20
at random (Sec. 5.1.1); candidate samples come from a two-tower
retriever and random samples from the corpus, and soft labels from a ranking model fitted with weighted logloss
(all as :mod:`~cascade_ranking.datasets.ranktower_sampling`).

Errors are one line naming the file and the field: a missing file, a missing column, a wrong checksum, a
truncated archive. Extraction and the dataset are written in staging folders renamed into place on success,
so nothing half-written stays.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..data.atomic import staged_directory
from ..data.cache import source_cache_dir
from .bucketize import equal_frequency_bins
from .full_stage import Attribute, InteractionLog
from .ranktower_sampling import RankTowerSamples, RankTowerSamplingConfig, build_ranktower_samples

__all__ = [
    "ARCHIVE_MD5",
    "ARCHIVE_NAME",
    "FEEDBACK_COLUMNS",
    "KUAIRAND_PURE_URL",
    "KUAIRAND_SAMPLING",
    "LOG_FILES",
    "KuaiRandError",
    "build_kuairand_pure",
    "check_archive",
    "extract_archive",
    "fetch_archive",
    "locate_source",
    "read_kuairand_log",
]

logger = logging.getLogger(__name__)

KUAIRAND_PURE_URL = "https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz?download=1"
ARCHIVE_NAME = "KuaiRand-Pure.tar.gz"
ARCHIVE_MD5 = "0820331067a3784d9691136f772b35a7"
DATA_DIR = "KuaiRand-Pure/data"
LOG_FILES = ("log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv")
USER_FILE = "user_features_pure.csv"
VIDEO_FILE = "video_features_basic_pure.csv"
FEEDBACK_COLUMNS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "long_view", "is_profile_enter")
USER_CATEGORICAL = (
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    *(f"onehot_feat{i}" for i in range(18)),
)
USER_CONTINUOUS = ("follow_user_num", "fans_user_num", "friend_user_num", "register_days")
VIDEO_CATEGORICAL = ("video_type", "upload_type", "music_type", "tag")
VIDEO_CONTINUOUS = ("video_duration",)
#: equal-frequency bins per continuous feature
N_BINS = 10
CACHE_NAME = "kuairand-pure"

#: RankTower's KuaiRand setting: feedback = the number of positive signals, the paper's user filter.
KUAIRAND_SAMPLING = RankTowerSamplingConfig(
    impression_label=1.0,
    rating_weight=1.0,
    rating_is_feedback=True,
    positive_rating=1.0,
    min_impressions=100,
    min_positives=20,
    history_fields=("item_id", "tag"),
    split="random",
)


class KuaiRandError(ValueError):
    """Bad KuaiRand input: the one-line message names the file and the field."""


# ------------------------------------------------------------------------------------------------------
# archive: download, checksum, extraction
# ------------------------------------------------------------------------------------------------------
def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_archive(path: Path, md5: str = ARCHIVE_MD5) -> Path:
    """``path`` if its md5 is ``md5``; raises :class:`KuaiRandError` naming the file otherwise."""
    got = _md5(path)
    if got != md5:
        raise KuaiRandError(f"{path}: md5 {got} does not match the published {md5} (a corrupted or other file)")
    return path


def fetch_archive(
    cache_dir: Path | None = None, *, url: str = KUAIRAND_PURE_URL, md5: str = ARCHIVE_MD5, progress: bool = False
) -> Path:
    """The cached, checked ``KuaiRand-Pure.tar.gz``, downloaded first (with a progress bar) if not cached.

    The download goes to a temporary file beside the cache entry and is renamed only after its md5 matched.

    Raises:
        KuaiRandError: a network error or a wrong checksum (the message suggests ``--src``).
    """
    target = source_cache_dir(CACHE_NAME, cache_dir) / ARCHIVE_NAME
    if target.is_file():
        return check_archive(target, md5)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{ARCHIVE_NAME}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        _download(url, tmp, progress=progress)
        check_archive(tmp, md5)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _download(url: str, dest: Path, *, progress: bool) -> None:
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), disable=not progress)
    try:
        with bar, urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
            task = bar.add_task(f"downloading {ARCHIVE_NAME}", total=int(resp.headers.get("Content-Length") or 0))
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                bar.advance(task, len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        raise KuaiRandError(
            f"{url}: download failed ({type(exc).__name__}: {getattr(exc, 'reason', exc)}); "
            f"copy {ARCHIVE_NAME} (or its extracted folder) here and run: cascade-ranking prepare kuairand-pure "
            "--src DIR"
        ) from None


def extract_archive(archive: Path, dest: Path) -> Path:
    """Extract the files this module reads from ``archive`` into ``dest`` (staged; replaced whole on success).

    Returns:
        ``dest``, holding the files of :data:`LOG_FILES`, the user and the video feature files.

    Raises:
        KuaiRandError: the archive is truncated or not a gzip tar, or lacks one of the files (named).
    """
    wanted = {f"{DATA_DIR}/{name}": name for name in (*LOG_FILES, USER_FILE, VIDEO_FILE)}
    with staged_directory(Path(dest)) as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                found = set()
                for member in tar:
                    name = wanted.get(member.name.lstrip("./"))
                    if name is None or not member.isfile():
                        continue
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file
                    with source, open(tmp / name, "wb") as out:
                        while chunk := source.read(1 << 20):
                            out.write(chunk)
                    found.add(name)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise KuaiRandError(
                f"{archive}: truncated or not a gzip tar archive ({type(exc).__name__}: {exc})"
            ) from None
        missing = sorted(set(wanted.values()) - found)
        if missing:
            raise KuaiRandError(f"{archive}: the archive has no {DATA_DIR}/{missing[0]}")
    return Path(dest)


def locate_source(
    src: Path | None, cache_dir: Path | None = None, *, md5: str = ARCHIVE_MD5, progress: bool = False
) -> Path:
    """The folder holding the extracted CSV files, from ``src`` (a folder with the archive, the extracted
    ``KuaiRand-Pure`` tree, its ``data`` folder, or the CSV files) or from the downloaded, cached archive.

    Raises:
        KuaiRandError: ``src`` holds none of these; a bad archive (see :func:`extract_archive`).
    """
    cache = source_cache_dir(CACHE_NAME, cache_dir)
    if src is None:
        return extract_archive(fetch_archive(cache_dir, md5=md5, progress=progress), cache / "data")
    src = Path(src)
    for folder in (src, src / "data", src / DATA_DIR):
        if (folder / LOG_FILES[0]).is_file() or (folder / USER_FILE).is_file():
            return folder
    archive = src if src.is_file() else src / ARCHIVE_NAME
    if archive.is_file():
        return extract_archive(check_archive(archive, md5), cache / "data")
    raise KuaiRandError(f"{src}: holds neither {ARCHIVE_NAME} nor {DATA_DIR}/{LOG_FILES[0]}")


# ------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------
def _read_csv(folder: Path, name: str, columns: Sequence[str]) -> pa.Table:
    path = folder / name
    if not path.is_file():
        raise KuaiRandError(f"{path}: file not found (KuaiRand-Pure's {DATA_DIR}/{name})")
    try:
        header = pacsv.open_csv(path).schema.names
    except (pa.ArrowInvalid, OSError) as exc:
        raise KuaiRandError(f"{path}: not a readable CSV file ({exc})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise KuaiRandError(f"{path}: column {missing[0]!r} is missing (columns: {', '.join(header)})")
    try:
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=list(columns)))
    except pa.ArrowInvalid as exc:
        raise KuaiRandError(f"{path}: {exc}".splitlines()[0]) from None


def _dense_ids(values: pa.ChunkedArray) -> tuple[np.ndarray, int]:
    """Ids ``1..V`` in sorted order of the distinct values (nulls -> 0) and the vocabulary size ``V + 1``."""
    arr = values.combine_chunks()
    uniq = pc.unique(arr.drop_null()).sort()
    ids = pc.fill_null(pc.add(pc.index_in(arr, uniq), 1), 0)
    return ids.to_numpy(zero_copy_only=False).astype(np.int64), len(uniq) + 1


def _attributes(table: pa.Table, key_rows: np.ndarray, n: int, categorical, continuous, what: str) -> dict:
    out = {}
    for name in categorical:
        col = table.column(name)
        if name == "tag":  # "12,65": the first tag
            col = pc.list_element(pc.split_pattern(col.cast(pa.string()), ","), 0)
        ids, vocab = _dense_ids(col.cast(pa.string()))
        out[name] = Attribute(_scatter(key_rows, ids, n), vocab, f"{what} {name}, sorted distinct values")
    for name in continuous:
        ids, edges = equal_frequency_bins(table.column(name).to_numpy(zero_copy_only=False).astype(np.float64), N_BINS)
        out[name] = Attribute(_scatter(key_rows, ids, n), len(edges) + 2, f"{what} {name}, equal-frequency bins")
    return out


def _scatter(rows: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    values = np.zeros(n + 1, np.int64)
    values[rows] = ids
    return values


def read_kuairand_log(folder: Path) -> InteractionLog:
    """The standard logs and the feature tables of ``folder`` as an :class:`InteractionLog`.

    ``rating`` = the number of positive feedback signals of the impression (:data:`FEEDBACK_COLUMNS`), ``timestamp``
    = ``time_ms // 1000``; users and videos get dense ids in sorted order of their KuaiRand ids.

    Raises:
        KuaiRandError: a missing file or column (named); a log user or video absent from its feature table.
    """
    folder = Path(folder)
    logs = [_read_csv(folder, name, ("user_id", "video_id", "time_ms", *FEEDBACK_COLUMNS)) for name in LOG_FILES]
    users = _read_csv(folder, USER_FILE, ("user_id", *USER_CATEGORICAL, *USER_CONTINUOUS))
    videos = _read_csv(folder, VIDEO_FILE, ("video_id", *VIDEO_CATEGORICAL, *VIDEO_CONTINUOUS))
    log = pa.concat_tables([t.cast(logs[0].schema) for t in logs])
    ids = {}
    for key, table, name in (("user_id", users, USER_FILE), ("video_id", videos, VIDEO_FILE)):
        known = np.sort(table.column(key).to_numpy())
        logged = log.column(key).to_numpy()
        pos = np.searchsorted(known, logged)
        bad = (pos >= len(known)) | (known[np.minimum(pos, len(known) - 1)] != logged)
        if bad.any():
            raise KuaiRandError(f"{folder / name}: {key} {int(logged[bad][0])} of the logs is not in this table")
        ids[key] = (known, pos + 1)
    feedback = sum(log.column(c).to_numpy().astype(np.float64) for c in FEEDBACK_COLUMNS)
    n_users, n_items = len(ids["user_id"][0]), len(ids["video_id"][0])
    user_rows = np.searchsorted(ids["user_id"][0], users.column("user_id").to_numpy()) + 1
    video_rows = np.searchsorted(ids["video_id"][0], videos.column("video_id").to_numpy()) + 1
    return InteractionLog(
        user=ids["user_id"][1].astype(np.int64),
        item=ids["video_id"][1].astype(np.int64),
        rating=feedback,
        timestamp=(log.column("time_ms").to_numpy() // 1000).astype(np.int64),
        num_users=n_users,
        num_items=n_items,
        user_features=_attributes(users, user_rows, n_users, USER_CATEGORICAL, USER_CONTINUOUS, "user"),
        item_features=_attributes(videos, video_rows, n_items, VIDEO_CATEGORICAL, VIDEO_CONTINUOUS, "video"),
        source=str(folder),
    )


@dataclass(frozen=True)
class KuaiRandBuild:
    """What :func:`build_kuairand_pure` returns: the samples and the folder the CSV files were read from."""

    samples: RankTowerSamples
    source: Path


def build_kuairand_pure(
    out_dir: Path,
    *,
    src: Path | None = None,
    cache_dir: Path | None = None,
    seed: int = 0,
    config: RankTowerSamplingConfig = KUAIRAND_SAMPLING,
    md5: str = ARCHIVE_MD5,
    progress: bool = False,
    threads: int | None = None,
) -> KuaiRandBuild:
    """``cascade-ranking prepare kuairand-pure``: fetch (or read ``src``), convert, write ``out_dir``.

    The paper's protocol (:data:`KUAIRAND_SAMPLING`): each user's requests split 70/10/20 at random into
    ``train``, ``valid``, ``test`` (Sec. 5.1.1); a ``config`` with ``split="time"`` (and, say, ``test_weeks=1,
    valid_weeks=1``: the standard logs span the five Monday-based weeks of 2022-04-08 to 2022-05-08) gives weekly
    partitions instead.

    Raises:
        KuaiRandError: see :func:`locate_source` and :func:`read_kuairand_log`.
        ValueError: see :func:`~cascade_ranking.datasets.ranktower_sampling.build_ranktower_samples`.
    """
    folder = locate_source(src, cache_dir, md5=md5, progress=progress)
    log = read_kuairand_log(folder)
    provenance = {
        "dataset": "KuaiRand-Pure (Gao et al., CIKM 2022), https://kuairand.com/, zenodo.org/records/10439422",
        "licence": "CC BY-SA 4.0",
        "files": [*LOG_FILES, USER_FILE, VIDEO_FILE],
        "feedback_columns": list(FEEDBACK_COLUMNS),
    }
    samples = build_ranktower_samples(
        log, Path(out_dir), name="kuairand-pure", seed=seed, config=config, provenance=provenance, threads=threads
    )
    return KuaiRandBuild(samples=samples, source=folder)
