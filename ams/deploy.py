"""What a job linked with AMSlib reads: the ``AMS_OBJECTS`` description of its database and models.

Upstream's ``ams_jobs.AMSDomainJob._generate_ams_object`` builds it by hand
before each submission; :func:`deployment_config` builds the same dict from a
store in one call, through the store's public API only (``search`` and the
folder getters), so it works on both constructor forms and both backends.

>>> import json
>>> config = store.deployment_config(["EOS", "Opacity"])
>>> config["domain_models"]
{'EOS': 'model_0', 'Opacity': 'model_1'}
>>> with open("ams_objects.json", "w") as handle:
...     json.dump(config, handle)
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Dict, List, Mapping, Sequence, Union

from .errors import InvalidArgumentError, InvalidArgumentTypeError, NotFoundError
from .store_types import UQAggregate, UQType

__all__ = ["deployment_config", "DATA_GATHERING_MODEL"]

#: The entry of a domain without a model: AMSlib runs the physics and stores every sample.
DATA_GATHERING_MODEL = {"uq_type": UQType.Random.value, "model_path": "",
                        "uq_aggregate": UQAggregate.mean.value, "threshold": 1}


def deployment_config(store: Any, domain_names: Union[str, Sequence[str]],
                      version: Union[str, int] = "latest", *,
                      stage_dir: Union[None, str, "os.PathLike[str]"] = None,
                      rmq: Any = None) -> Dict[str, Any]:
    """The ``AMS_OBJECTS`` dict for ``domain_names`` (AMSlib's JSON), as upstream's jobs build it.

    * ``db``: where AMSlib writes its samples. Without ``rmq``: ``{"fs_path":
      stage_dir or the store's candidates folder, "dbType": "hdf5"}`` (a
      store without a root, MariaDB without ``root_path=``, needs
      ``stage_dir``). With ``rmq`` (an object with upstream's
      ``to_dict(AMSlib=True)`` or a dict of it): ``{"rmq_config": ...,
      "dbType": "rmq", "update_surrogate": False}``.
    * ``ml_models``: ``model_<i>`` -> ``{"uq_type", "model_path",
      "uq_aggregate", "threshold", "db_label"}`` for the i-th domain, from the
      domain's model of ``version``; ``uq_type``/``uq_aggregate`` as AMSlib
      spells them (values, also when the store holds the old names), and
      ``uq_aggregate`` ``"mean"`` when the model has none (upstream always
      wrote ``"mean"``). A domain without models gets the data-gathering
      entry :data:`DATA_GATHERING_MODEL` (when ``version`` is ``"latest"``;
      a specific version that does not exist is a
      :class:`~ams.errors.NotFoundError`). When the version holds several
      models, the one with the lowest ``val_error`` is taken.
    * ``domain_models``: domain -> ``model_<i>``.

    ``version``: ``"latest"``, ``"@alias"`` (e.g. ``"@champion"``: a domain
    without that alias is a :class:`~ams.errors.NotFoundError` naming it), an
    int or a digit string; passed to ``store.search`` unchanged.
    """
    if isinstance(domain_names, str):
        domain_names = [domain_names]
    if not isinstance(domain_names, (list, tuple)) or not domain_names:
        raise InvalidArgumentTypeError(f"domain_names must be a non-empty list of domain names, "
                                       f"not {domain_names!r}")
    config: Dict[str, Any] = {"db": _db_section(store, stage_dir, rmq), "ml_models": {},
                              "domain_models": {}}
    for index, name in enumerate(domain_names):
        label = f"model_{index}"
        models = store.search(domain_name=name, entry="models", version=version)
        if not models:
            if isinstance(version, str) and version.startswith("@"):
                raise NotFoundError(f"domain {name!r} has no models alias {version[1:]!r} "
                                    f"(its aliases: {store.aliases(name) or 'none'})")
            if not (isinstance(version, str) and version == "latest"):
                raise NotFoundError(f"domain {name!r} has no models of version {version!r}")
            entry = dict(DATA_GATHERING_MODEL)
        else:
            entry = _model_entry(_best(models))
        entry["db_label"] = name
        config["ml_models"][label] = entry
        config["domain_models"][name] = label
    return config


def _db_section(store: Any, stage_dir: Any, rmq: Any) -> Dict[str, Any]:
    if rmq is not None:
        if hasattr(rmq, "to_dict"):
            rmq_config = rmq.to_dict(AMSlib=True)
        elif isinstance(rmq, Mapping):
            rmq_config = dict(rmq)
        else:
            raise InvalidArgumentTypeError(f"rmq must be an AMSRMQConfiguration (to_dict) or a "
                                           f"dict, not {type(rmq).__name__}")
        return {"rmq_config": rmq_config, "dbType": "rmq", "update_surrogate": False}
    fs_path = os.fspath(stage_dir) if stage_dir is not None else str(store.get_candidate_path())
    return {"fs_path": fs_path, "dbType": "hdf5"}


def _best(models: List[Mapping[str, Any]]) -> Mapping[str, Any]:
    def error(model: Mapping[str, Any]) -> float:
        value = model.get("val_error")
        return (float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool)
                else float("inf"))
    return min(models, key=error)  # min keeps the first of equals


def _model_entry(model: Mapping[str, Any]) -> Dict[str, Any]:
    path = model["filename"]
    missing = [key for key in ("uq_type", "threshold") if model.get(key) is None]
    if missing:
        raise InvalidArgumentError(f"model {path!r} has no {' and no '.join(missing)} (was it "
                                   "added with add_model and an AMSModelDescr?)")
    try:
        uq_type = UQType(model["uq_type"]).value
    except ValueError:
        raise InvalidArgumentError(f"model {path!r} has an unknown uq_type "
                                   f"{model['uq_type']!r}") from None
    aggregate = model.get("uq_aggregate")
    try:
        uq_aggregate = UQAggregate(aggregate).value if aggregate is not None else "mean"
    except ValueError:
        raise InvalidArgumentError(f"model {path!r} has an unknown uq_aggregate "
                                   f"{aggregate!r}") from None
    return {"uq_type": uq_type, "model_path": path, "uq_aggregate": uq_aggregate,
            "threshold": model["threshold"]}
