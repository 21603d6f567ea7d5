"""Typed run configuration (pydantic v2); the resolved copy is saved in every run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import validation_problems

__all__ = [
    "DEFAULT_MODELS",
    "EarlyStopping",
    "MAX_CONFIG_BYTES",
    "MAX_THREADS",
    "TrainConfig",
    "config_from",
    "parse_sets",
    "read_config_file",
    "safe_yaml",
]

#: The most torch threads a run may ask for (torch's own limit is a C ``int``; no machine has more cores).
MAX_THREADS = 4096
#: The largest config file read (a config is a few hundred bytes; anything larger is not one).
MAX_CONFIG_BYTES = 1 << 20

#: Default stage models by number of stages (LCRON experiments: DSSM retrieval, DIN last stage).
DEFAULT_MODELS = {1: ["dssm"], 2: ["dssm", "din"], 3: ["dssm", "mlp", "din"]}


class EarlyStopping(BaseModel):
    """Early stopping on the validation partitions, checked every ``every`` optimizer steps.

    At every check the validation metric is computed; a check that does not beat the best by more than
    ``min_delta`` counts against ``patience``. Training stops after ``patience`` such checks in a row, or at the
    end of its passes, and the run keeps the weights of the best check (RankTower, Sec. 5.1.4: "early
    stopping ... on the validation set"; the check interval is ours). A run whose last step falls between
    checks is checked once more at its end.

    Attributes:
        every: optimizer steps between checks (> 0).
        patience: checks without improvement before stopping (> 0).
        metric: the validation metric to maximise, a key of the validation metrics (``joint_recall``,
            ``recall@retrieval``, ...; the pre-ranking benchmark passes its own, Recall@keep per user's list).
        min_delta: the least gain that counts as an improvement (>= 0).
    """

    model_config = ConfigDict(extra="forbid")

    every: int = Field(gt=0)
    patience: int = Field(default=3, gt=0)
    metric: str = "joint_recall"
    min_delta: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class TrainConfig(BaseModel):
    """Everything that defines a training run. ``None`` means "take the dataset's default".

    Attributes:
        method: a cascade method registered in ``cascade_ranking.losses`` (e.g. ``"lcron"``).
        data: dataset directory in the store format; ``None`` = the prepared MovieLens-100K copy for
            ``stages`` (prepared on first use).
        stages: number of cascade stages when ``data`` is ``None`` (2 or 3); otherwise taken from the data.
        models: stage model names, retrieval first (default DSSM ... DIN).
        keep: candidates each stage keeps (default: the dataset's).
        gt_num: ground-truth size (default: the dataset's).
        emb_dim, hidden: embedding dimension and hidden units (LCRON experiments: 8 and 128).
        model_options: further keyword arguments per stage model name (e.g. ``{"ranktower": {"heads_user": 2}}``);
            a model the cascade lacks, or an option its model does not take, is refused when the run starts.
        batch_size, passes: training batch size and passes over the training partitions (default: the
            dataset's own; RecFlow: 1024 and 1).
        lr: Adam learning rate over the models and the loss's learnable weights (0.01, as in the paper).
        seed: seeds torch, the loader's shuffles and the evaluation's tie-breaking.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        eval_batch_size: requests per evaluation batch (evaluation never drops a request).
        loss: method hyper-parameters passed to ``losses.build`` (e.g. ``{"tau": 50}``).
        threads: torch intra-op threads: a count, ``"auto"`` (the fastest of 1, half and all usable CPUs, timed on
            the first batch) or ``None`` (default: torch's count capped at the CPUs this process may use); see
            :mod:`cascade_ranking.training.threads`.
        prefetch: training batches prepared ahead by a background thread (read, shuffled, split across ranks
            and, on CUDA, pinned) while the step runs; ``0`` = none; ``None`` (default) = 2 on CUDA, 0 on CPU
            (where the loader and the step share the cores). The batches and their order are the same either
            way (:mod:`cascade_ranking.data.prefetch`).
        checkpoint_every: also checkpoint every this many steps (always at partition boundaries).
        skip_nonfinite: skip (and count) a step whose loss or gradient is NaN/inf instead of stopping.
        shuffle_window: requests the loader reads, shuffles and holds at once (whole Parquet row groups, at least
            one; ``None`` = a partition whole): the training's memory bound on data of any size. A partition
            that fits is shuffled as a whole; see :mod:`cascade_ranking.data.loader`.
        early_stopping: :class:`EarlyStopping` on the validation partitions (``None``, the default: train every
            pass and keep the last weights).
        tensorboard: a TensorBoard log directory: per step the loss, its parts, the loss's learnable parameters,
            the learning rate and requests/s, and the validation/test metrics after evaluation (needs the
            ``tensorboard`` package; see :mod:`cascade_ranking.training.tracking`). ``None`` (default) = no logging. A
            resumed run appends to the same directory. In a benchmark each (method, seed) run logs into
            ``<tensorboard>/<method>-seed<seed>``, so ``tensorboard --logdir`` compares the runs.
    """

    model_config = ConfigDict(extra="forbid")

    method: str = "lcron"
    data: Path | None = None
    stages: Literal[2, 3] = 2
    models: list[str] | None = None
    keep: list[int] | None = None
    gt_num: int | None = Field(default=None, gt=0)
    emb_dim: int = Field(default=8, gt=0)
    hidden: int = Field(default=128, gt=0)
    model_options: dict[str, dict[str, Any]] = {}
    batch_size: int | None = Field(default=None, gt=0)
    passes: int | None = Field(default=None, gt=0)
    lr: float = Field(default=0.01, gt=0, allow_inf_nan=False)
    seed: int = Field(default=0, ge=0, lt=2**63)
    device: str = "auto"
    eval_batch_size: int = Field(default=4096, gt=0)
    loss: dict[str, Any] = {}
    threads: Annotated[int, Field(gt=0, le=MAX_THREADS)] | Literal["auto"] | None = None
    prefetch: int | None = Field(default=None, ge=0)
    checkpoint_every: int | None = Field(default=None, gt=0)
    skip_nonfinite: bool = False
    early_stopping: EarlyStopping | None = None
    tensorboard: Path | None = None
    shuffle_window: int | None = Field(default=32_768, gt=0)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        from .. import losses

        if v not in losses.REGISTRY:
            raise ValueError(f"unknown method {v!r}; known methods: {', '.join(losses.REGISTRY)}")
        return v


def _one_line(exc: Exception) -> str:
    """A parser error in one line: YAML's problem and its line/column (YAML prints the line and a caret)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def safe_yaml(text: str) -> Any:
    """Parse YAML from outside with limits: the safe loader (plain data only) that also refuses aliases
    (``*name``), so a small document cannot expand into billions of nodes ("billion laughs").

    Raises:
        yaml.YAMLError: unparsable text or an alias (names the line).
    """
    import yaml

    class _NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not allowed in a config; write the value out", mark
                )
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader subclass


def read_config_file(path: str | Path, model: type[BaseModel] = TrainConfig) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) config file into a dict of ``model``'s fields.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unparsable file, not a mapping, or an unknown key — the message names the file and the key
            and suggests the closest known key.
    """
    import difflib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    import yaml

    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: {size} bytes, too large for a config file (at most {MAX_CONFIG_BYTES})")
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            values = safe_yaml(text) or {}
        else:
            raise ValueError("expected a .toml, .yaml or .yml file")
    except (ValueError, yaml.YAMLError) as exc:  # tomllib.TOMLDecodeError is a ValueError; both carry the line
        raise ValueError(f"{path}: not a valid config file ({_one_line(exc)})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    known = list(model.model_fields)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise ValueError(f"{path}: unknown key {key!r}{hint}")
    return values


def parse_sets(items: list[str] | tuple[str, ...], model: type[BaseModel] = TrainConfig) -> dict[str, Any]:
    """``--set KEY=VALUE`` overrides as a dict of ``model``'s fields; ``a.b=v`` sets key ``b`` of mapping ``a``
    (``a.b.c=v``: key ``c`` of mapping ``b`` of ``a``, e.g. ``model_options.din.attention_hidden=16``).

    Values are read as YAML scalars or flow collections (``50``, ``0.01``, ``true``, ``null``, ``[30, 20]``,
    ``dssm``), so ``--set keep=[30,20] --set loss.tau=50 --set emb_dim=16`` work as in a config file.

    Raises:
        ValueError: an item without ``=``, an unparsable value, or an unknown key (with the closest known key).
    """
    import difflib

    import yaml

    known = list(model.model_fields)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. emb_dim=16 or loss.tau=50")
        try:
            value = safe_yaml(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: cannot read the value ({_one_line(exc)})") from None
        top, *path = key.split(".")
        if top not in known:
            close = difflib.get_close_matches(top, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
            raise ValueError(f"--set {item!r}: unknown key {top!r}{hint}")
        target, name = out, top
        for part in path:  # a.b.c=v: key c of mapping b of mapping a
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise ValueError(f"--set {item!r}: {name!r} was set to a value, not a mapping")
            name = part
        target[name] = value
    return out


def config_from(
    model: type[BaseModel], file: str | Path | None, overrides: dict[str, Any], sets: list[str] | None = None
):
    """``model`` built from a config file (optional), then ``--set`` items (:func:`parse_sets`; ``a.b=v`` updates
    mapping ``a``), then command-line ``overrides`` (``None`` = not given), later ones winning.

    Raises:
        ValueError: as :func:`read_config_file` or :func:`parse_sets`, or a value that fails validation (names the
            field).
    """
    from pydantic import ValidationError

    values = read_config_file(file, model) if file is not None else {}
    for key, value in parse_sets(sets or [], model).items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = validation_problems(exc, "config")
        where = f"{file}: " if file is not None else ""
        raise ValueError(f"{where}invalid configuration: {problems}") from None
