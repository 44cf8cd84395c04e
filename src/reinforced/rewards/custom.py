"""User rewards: a Python callable, a function in a file (``my_rewards.py:fn``) or a module (``pkg.mod:fn``).

A reward term's ``name`` is a registered reward (``reinforced list rewards``), a name given to a Python
callable (``Trainer(reward_funcs=[fn])`` registers ``fn.__name__`` with ``register_callable``), or a
reference ``path/to/file.py:function`` / ``package.module:function`` (verl's and EasyR1's
``custom_reward_function`` spelling). Two shapes are accepted, told apart by parameter names:

* batch-level, TRL's shape: ``f(completions, prompts, **columns) -> list[float | None]``, called by keyword
  once per batch with ``completions`` (the texts), ``prompts`` (each row's question text) and one list per
  column: ``answer``, ``prompt_id``, ``task``, ``answer_type``, ``choices`` and every ``metadata`` key (a row
  without that key gives None), plus the term's ``params`` as plain keywords. A function declares the
  columns it reads, or takes ``**kwargs``. None means "does not apply" (scores 0, not an error).
* per-sample, like the built-ins: ``f(completion, prompt, **params)`` with ``prompt`` a ``types.Prompt``
  (``.answer``, ``.metadata``, ...) returning a number, a bool, None or a ``RewardResult``.

Either shape may declare the context parameters of ``base.CONTEXT_PARAMS`` (``num_tokens``, ``truncated``,
``correct``, ``group_num_tokens``, ``group_correct``): a per-sample reward gets one value, a batch reward one
list per parameter with an entry per completion (as TRL passes ``completion_ids``). Only declared ones are
passed (``**kwargs`` does not ask for them), since ``correct`` makes the reward run after the accuracy terms.

Gold answers (``reads_gold``): the load-time check that every row has a gold answer (data/checks.py) applies
to an accuracy term that can read one: a built-in verifier, a per-sample user reward (it gets the whole
``Prompt``), or a batch reward that takes ``answer`` or ``**columns``. A batch reward that declares only the
columns it reads, without ``answer``, scores rows that have no gold.

A callable given to ``Trainer`` is also saved by value in its run directory (``<run>/rewards/<name>.pkl``,
``save_callable``); loading that run's config.yaml in another process (``reinforced eval RUN``, ``--resume``)
restores it from there with a logged note (``restore_saved``), since its bare name means nothing elsewhere.

Both run in the time-limited reward worker (worker.py); functions from the user's ``__main__``, a notebook
or a file travel to it by value (cloudpickle), so no ``__main__`` guard and no registration is needed.
Written here because the libraries that accept such references (verl, EasyR1, TRL) do it inside their own
trainers; the loading is ``importlib`` and the transport cloudpickle.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from reinforced.registry import UnknownNameError, did_you_mean
from reinforced.rewards.base import CONTEXT_PARAMS, REWARDS, validate_params
from reinforced.rewards.worker import as_score
from reinforced.types import Prompt, RewardResult

SHAPES = ("f(completions, prompts, **columns) -> list[float | None] (batch, TRL's shape)",
          "f(completion, prompt, **params) -> float | None (one sample)")
_CALLABLES: dict[str, Callable[..., Any]] = {}
_LOADED: dict[str, Callable[..., Any]] = {}  # reference -> adapted function (one object per file function)
SAVED_DIR = "rewards"  # <run>/rewards/<name>.pkl: Trainer's callables, by value
log = logging.getLogger(__name__)


class RewardLoadError(ValueError):
    """A reward reference that names a missing file, module or function, or a function of the wrong shape."""


@dataclass(frozen=True)
class BatchReward:
    """A batch-level reward ``fn(completions=..., prompts=..., **columns)`` adapted to one result per completion."""

    fn: Callable[..., Any]
    name: str

    @property
    def __wrapped__(self) -> Callable[..., Any]:  # inspect.signature (base.context_params) sees the user's
        return self.fn

    def __call__(self, completions: list[str], prompts: list[Prompt], **params: Any) -> list[RewardResult]:
        kwargs = {"completions": completions, "prompts": [p.question for p in prompts], **columns_of(prompts)}
        clash = sorted(set(params) & set(kwargs))
        if clash:
            raise ValueError(f"reward {self.name!r}: params {clash} clash with dataset columns of the same name")
        kwargs.update(params)
        accepted = inspect.signature(self.fn).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        scores = self.fn(**kwargs)
        return to_results(scores, len(completions), self.name)


@dataclass(frozen=True)
class SampleReward:
    """A per-sample user reward ``fn(completion, prompt, **params)`` whose number, bool or None becomes a
    ``RewardResult`` (the built-ins return one). ``inspect.signature`` sees ``fn``'s own signature."""

    fn: Callable[..., Any]
    name: str

    @property
    def __wrapped__(self) -> Callable[..., Any]:  # inspect.signature unwraps to the user's parameters
        return self.fn

    def __call__(self, completion: str, prompt: Prompt, **params: Any) -> RewardResult:
        value = self.fn(completion, prompt, **params)
        if isinstance(value, RewardResult):
            return value
        score = None if value is None else as_score(value)
        if value is not None and score is None:
            return RewardResult(score=None, info={"error": f"reward {self.name!r} returned {value!r:.40}, "
                                                  "not a number, None or RewardResult"})
        return RewardResult(score=score)


def columns_of(prompts: Sequence[Prompt]) -> dict[str, list[Any]]:
    """One list per dataset column of ``prompts``: the typed fields, then every metadata key.

    >>> cols = columns_of([Prompt("a", "1+1?", answer="2", metadata={"unit": "cm"}), Prompt("b", "2+2?")])
    >>> cols["answer"], cols["unit"]
    (['2', None], ['cm', None])
    """
    cols: dict[str, list[Any]] = {
        "answer": [p.answer for p in prompts], "prompt_id": [p.prompt_id for p in prompts],
        "task": [p.task for p in prompts], "answer_type": [p.answer_type for p in prompts],
        "choices": [list(p.choices) for p in prompts]}
    keys = dict.fromkeys(k for p in prompts for k in p.metadata)
    for key in keys:
        if key not in cols:  # a metadata key never shadows a typed field
            cols[key] = [p.metadata.get(key) for p in prompts]
    return cols


def to_results(scores: Any, expected: int, name: str) -> list[RewardResult]:
    """A batch reward's return value as results: one number, bool or None per completion."""
    if isinstance(scores, str | bytes | Mapping) or not isinstance(scores, Iterable):
        raise TypeError(f"reward {name!r} returned {type(scores).__name__}; a batch reward returns a list "
                        f"with one float or None per completion")
    values = list(scores)
    if len(values) != expected:
        raise ValueError(f"reward {name!r} returned {len(values)} scores for {expected} completions")
    out = []
    for v in values:
        score = None if v is None else as_score(v)
        if v is not None and score is None:
            out.append(RewardResult(score=None, info={"error": f"reward {name!r} returned {v!r:.40}, not a number"}))
        else:
            out.append(RewardResult(score=score))
    return out


def adapt(fn: Any, name: str) -> Callable[..., Any]:
    """``fn`` as a reward the composer can run: a ``BatchReward`` or a ``SampleReward``."""
    if not callable(fn):
        raise RewardLoadError(f"reward {name!r} is a {type(fn).__name__}, not a function")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError) as err:
        raise RewardLoadError(f"reward {name!r}: cannot read its signature ({err})") from None
    if "completions" in params:
        return BatchReward(fn, name)
    positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        return SampleReward(fn, name)
    shown = f"{getattr(fn, '__name__', 'function')}{inspect.signature(fn)}"
    raise RewardLoadError(f"reward {name!r}: the function has the signature {shown}; a reward is one of: "
                          f"{'; '.join(SHAPES)}")


def register_callable(fn: Callable[..., Any], name: str | None = None) -> str:
    """Make a Python callable usable as a reward term named ``name`` (default: its ``__name__``).

    Registering a name again replaces the earlier function (a notebook cell run twice); a built-in
    reward's name is refused, so a term's name never means two things.
    """
    name = name or getattr(fn, "__name__", "")
    if not name or name == "<lambda>":
        raise RewardLoadError("a reward callable needs a name: define it with `def`, or pass (name, fn)")
    if name in REWARDS or ":" in name:
        raise RewardLoadError(f"reward callable {name!r}: the name is taken by a built-in reward "
                              f"(`reinforced list rewards`) or holds ':'; rename the function")
    _CALLABLES[name] = adapt(fn, name)
    return name


def is_reference(name: str) -> bool:
    """``file.py:function`` or ``module:function`` (a registered name never holds ':')."""
    return ":" in name


def split_reference(name: str) -> tuple[str, str]:
    """(file or module, function); the function is after the last ':'."""
    target, _, func = name.rpartition(":")
    if not target or not func.isidentifier():
        raise RewardLoadError(f"reward {name!r}: expected path/to/file.py:function or package.module:function")
    return target, func


def is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def resolve_file(name: str, base_dirs: Sequence[Path]) -> str:
    """``name`` with a relative file made absolute: the first of ``base_dirs`` (then the working directory)
    that holds it. References to modules and registered names come back unchanged."""
    if not is_reference(name):
        return name
    target, func = split_reference(name)
    if not is_file_target(target):
        return name
    path = Path(target).expanduser()
    candidates = [path] if path.is_absolute() else [Path(d) / path for d in (*base_dirs, Path.cwd())]
    for candidate in candidates:
        if candidate.is_file():
            return f"{candidate.resolve()}:{func}"
    looked = ", ".join(str(c) for c in candidates)
    raise RewardLoadError(f"reward file not found: {target} (looked for {looked})")


def resolve_reward(name: str) -> Callable[..., Any]:
    """The reward a term's ``name`` stands for: registered, a registered callable, or a reference."""
    if name in REWARDS:
        return REWARDS[name]
    if name in _CALLABLES:
        return _CALLABLES[name]
    if is_reference(name):
        if name not in _LOADED:
            _LOADED[name] = adapt(_load_reference(name), name)
        return _LOADED[name]
    try:
        return REWARDS[name]
    except UnknownNameError as err:
        raise UnknownNameError(
            f"{err}. A Python function given to Trainer is known only in the process that registered it, or "
            f"through its run directory (<run>/{SAVED_DIR}/{name}.pkl, read when that run's config.yaml is "
            f"loaded); elsewhere define it in a file and name the term 'my_rewards.py:{name}'") from None


def reads_gold(name: str) -> bool:
    """Whether reward ``name`` can read a row's gold answer (the load-time gold check applies to it): a
    built-in or per-sample reward (it gets the whole ``Prompt``), or a batch reward taking ``answer`` or
    ``**columns``; a batch reward that declares its columns without ``answer`` does not."""
    fn = resolve_reward(name)
    if not isinstance(fn, BatchReward):
        return True
    params = inspect.signature(fn.fn).parameters
    return "answer" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def save_callable(name: str, folder: Path) -> Path:
    """Pickle the callable registered as ``name`` by value into ``folder/<name>.pkl`` (a run's ``rewards/``).

    Functions of the user's ``__main__`` are pickled by value by cloudpickle anyway; a function from a user
    module outside site-packages is too, so the file does not depend on that module being importable later.
    """
    fn = _CALLABLES[name].fn  # type: ignore[attr-defined]
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    source = getattr(module, "__file__", None) or ""
    if module is not None and module.__name__ != "__main__" and source and "site-packages" not in source \
            and not module.__name__.startswith("reinforced"):
        cloudpickle.register_pickle_by_value(module)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pkl"
    path.write_bytes(cloudpickle.dumps(fn))
    return path


def restore_saved(name: str, base_dirs: Sequence[Path]) -> Path | None:
    """Register the callable saved as ``<base>/rewards/<name>.pkl`` when ``name`` is not known here (a run's
    config.yaml loaded in a new process); the path it came from, or None (known already, or no such file)."""
    if name in REWARDS or name in _CALLABLES or is_reference(name):
        return None
    for base in base_dirs:
        path = Path(base) / SAVED_DIR / f"{name}.pkl"
        if path.is_file():
            try:
                fn = cloudpickle.loads(path.read_bytes())
            except Exception as err:  # another Python, or a module it referenced is gone
                raise RewardLoadError(f"reward {name!r}: {path} cannot be unpickled ({type(err).__name__}: "
                                      f"{err}); define the function in a file and name the term "
                                      f"'my_rewards.py:{name}'") from None
            register_callable(fn, name)
            log.warning("reward %r: the Python function saved by Trainer in %s (its code as when the run "
                        "started)", name, path)
            return path
    return None


def _load_reference(name: str) -> Any:
    target, func = split_reference(name)
    if is_file_target(target):
        module = _import_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise RewardLoadError(f"reward {name!r}: cannot import module {target!r} ({err})") from None
    if "site-packages" not in (getattr(module, "__file__", None) or "") and not target.startswith("reinforced."):
        cloudpickle.register_pickle_by_value(module)  # a user's module: the worker may not have it on sys.path
    if not hasattr(module, func):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
        raise RewardLoadError(f"reward {name!r}: {target} has no function {func!r};"
                              f"{did_you_mean(func, names)} functions there: {', '.join(sorted(names)) or '(none)'}")
    return getattr(module, func)


def _import_file(path: Path) -> Any:
    """Import a reward file as its own module, pickled by value (the worker cannot import it by name)."""
    if not path.is_file():
        raise RewardLoadError(f"reward file not found: {path}")
    module_name = f"reinforced_user_rewards_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RewardLoadError(f"reward file {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise RewardLoadError(f"reward file {path} failed to import: {type(err).__name__}: {err}") from err
    cloudpickle.register_pickle_by_value(module)
    return module


def check_term(name: str, params: Mapping[str, Any]) -> Callable[..., Any]:
    """The reward of a term, with its ``params`` checked against its signature (errors name the term)."""
    fn = resolve_reward(name)
    if isinstance(fn, BatchReward):
        accepted = inspect.signature(fn.fn).parameters
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        reserved = [k for k in params if k in CONTEXT_PARAMS]
        if reserved:
            raise ValueError(f"reward {name!r}: {reserved[0]!r} is filled from the rollout; it is not a param")
        unknown = [k for k in params if not open_ended and k not in accepted]
        if unknown:
            raise ValueError(f"reward {name!r} has no parameter {unknown[0]!r}; valid: {', '.join(accepted)}")
    else:
        validate_params(name, params, getattr(fn, "fn", fn))
    return fn
