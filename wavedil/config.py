"""Configuration at the edge: Hydra/OmegaConf in, plain typed objects out.

Nothing below the CLI and the training entry point sees an OmegaConf object: this module turns
the composed config into a :class:`~wavedil.model.WaveNetConfig` and plain dicts.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from .model import WaveNetConfig

__all__ = ["CONF_DIR", "bundled_data", "model_config", "model_preset", "to_plain", "compose"]

#: The configs ship inside the package (``wavedil/conf``), so ``wavedil train`` works anywhere.
CONF_DIR = Path(__file__).resolve().parent / "conf"


def bundled_data(name: str) -> str:
    """Path of a bundled data set (``data/<name>`` of the checkout, or ``$WAVEDIL_DATA/<name>``).

    ``$WAVEDIL_DATA/<name>`` comes first; when ``WAVEDIL_DATA`` is set but has no ``<name>``
    folder, the checkout's is used with a warning naming both (a mistyped ``WAVEDIL_DATA`` went
    unnoticed before).
    """
    candidates = []
    env = os.environ.get("WAVEDIL_DATA")
    if env:
        candidates.append(Path(env) / name)
    candidates.append(Path(__file__).resolve().parent.parent / "data" / name)  # source checkout
    candidates.append(Path.cwd() / "data" / name)
    for i, c in enumerate(candidates):
        if c.is_dir():
            if env and i > 0:
                _warn_data_fallback(env, name, str(c))
            return str(c)
    raise ValueError(
        f"bundled data '{name}' not found (looked in {', '.join(str(c) for c in candidates)}): run from a "
        f"wavedil checkout, set WAVEDIL_DATA to the folder that holds '{name}', or pass data.root=/path"
    )


@functools.lru_cache(maxsize=None)  # once per setting, folder and fallback, not on every lookup
def _warn_data_fallback(env: str, name: str, used: str) -> None:
    why = "does not exist" if not Path(env).is_dir() else f"has no '{name}' folder"
    logging.getLogger(__name__).warning(
        "WAVEDIL_DATA=%s %s; using %s instead (set WAVEDIL_DATA to the folder that holds '%s', or unset it)",
        env, why, used, name,
    )  # fmt: skip


if not OmegaConf.has_resolver("bundled"):
    OmegaConf.register_new_resolver("bundled", bundled_data)


def to_plain(cfg: Any) -> Any:
    """A resolved plain-Python copy (dicts, lists, numbers, strings) of an OmegaConf node."""
    if isinstance(cfg, (DictConfig,)) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def model_config(cfg_model: Any) -> WaveNetConfig:
    """The ``model`` group of a composed config as a :class:`WaveNetConfig` (unknown keys: ValueError)."""
    return WaveNetConfig.from_dict(to_plain(cfg_model))


def model_preset(name: str) -> WaveNetConfig:
    """The :class:`WaveNetConfig` of a model preset ``conf/model/<name>.yaml`` (its overlay on
    ``ref30`` resolved), e.g. ``model_preset("small")``.

    Raises:
        ValueError: for an unknown name (the message lists the presets).
    """
    names = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
    if name not in names:
        raise ValueError(f"unknown model preset {name!r}; the presets are {names}")
    return model_config(compose([f"model={name}"]).model)


def compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """Compose the packaged config with Hydra's compose API (tests, notebooks, ``wavedil info``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
