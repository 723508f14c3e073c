"""``GATEWAY_*`` environment variables as traitlets configuration, one rule for every option.

- ``GATEWAY_<FLAG>`` for every command-line alias: ``GATEWAY_PORT=9000`` is ``--port=9000``,
  ``GATEWAY_POOL_SIZE=4`` is ``--pool-size=4``.
- ``GATEWAY_<CLASS>__<TRAIT>`` for any configurable trait: ``GATEWAY_DOCKERPROVISIONER__IMAGE=...``
  is ``--DockerProvisioner.image=...``.

Precedence, lowest first: defaults, config file, environment, command line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from traitlets import TraitError
from traitlets.config import Config, Configurable

PREFIX = "GATEWAY_"


def env_name(flag: str) -> str:
    return PREFIX + flag.upper().replace("-", "_")


def _set(config: Config, target: str, classes: Mapping[str, type[Configurable]], value: str) -> None:
    class_name, _, trait_name = target.rpartition(".")
    cls = classes.get(class_name)
    if cls is None:
        raise TraitError(f"unknown configurable class in {target!r}")
    trait = cls.class_traits(config=True).get(trait_name)
    if trait is None:
        raise TraitError(f"{class_name} has no option {trait_name!r}")
    config[class_name][trait_name] = trait.from_string(value)


def env_config(
    environ: Mapping[str, str], aliases: Mapping[Any, Any], classes: Iterable[type[Configurable]]
) -> Config:
    """The configuration that ``GATEWAY_*`` variables in ``environ`` ask for."""
    by_name: dict[str, type[Configurable]] = {}
    for cls in classes:
        for klass in cls.mro():
            if isinstance(klass, type) and issubclass(klass, Configurable):
                by_name.setdefault(klass.__name__, klass)
    config = Config()
    for alias, target in aliases.items():
        names = alias if isinstance(alias, tuple) else (alias,)
        target = target[0] if isinstance(target, tuple) else target
        for name in names:
            value = environ.get(env_name(name))
            if value is not None and len(name) > 1:
                _set(config, target, by_name, value)
    for key, value in environ.items():
        if key.startswith(PREFIX) and "__" in key:
            class_part, _, trait_part = key[len(PREFIX):].partition("__")
            match = next((n for n in by_name if n.upper() == class_part), None)
            if match is None:
                raise TraitError(f"{key}: no configurable class named {class_part!r}")
            _set(config, f"{match}.{trait_part.lower()}", by_name, value)
    return config
