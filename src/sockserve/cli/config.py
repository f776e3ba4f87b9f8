"""Settings from four places, merged: command line > environment > config file > default.

The config file is TOML, named by ``--config FILE`` (or ``SOCKSERVE_CONFIG``); its keys
are the long option names exactly as on the command line, dashes included
(``drain-timeout = 5``), at the top level. The environment has ``SOCKSERVE_<NAME>``
(``SOCKSERVE_DRAIN_TIMEOUT=5``; lists such as ``SOCKSERVE_BIND`` separate items by
spaces). An unknown key in the file is an error (a typo must not pass silently); an
unknown ``SOCKSERVE_*`` variable is a warning (the environment is shared with others).
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from .binds import Bind
from .options import BY_ENV, BY_NAME, ENV_PREFIX, OPTIONS, OTHER_ENVIRONMENT, OptionValueError

#: The variable naming a config file when ``--config`` is not given.
CONFIG_ENV = ENV_PREFIX + "CONFIG"


@dataclass
class Settings:
    """The merged settings: ``values[name]`` and where each came from (``sources``)."""

    values: dict[str, Any]
    sources: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def given(self, name: str) -> bool:
        """True unless the value is the default."""
        return self.sources[name] != "default"


def merge(
    command_line: Mapping[str, str | list[str]],
    environ: Mapping[str, str],
    config_file: str | None,
) -> Settings:
    """Merge the sources; ``command_line`` maps option names to their raw text."""
    values = {option.name: option.default for option in OPTIONS}
    sources = dict.fromkeys(values, "default")
    warnings: list[str] = []
    config_file = config_file or environ.get(CONFIG_ENV) or None
    if config_file:
        for key, value in _read_file(config_file).items():
            values[key], sources[key] = value, config_file
    for variable, text in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX):
            continue
        option = BY_ENV.get(variable)
        if option is None:
            if variable not in OTHER_ENVIRONMENT and variable != CONFIG_ENV:
                warnings.append(f"unknown environment variable {variable} (ignored)")
            continue
        values[option.name] = _parsed(variable, option.from_text, text)
        sources[option.name] = "environment"
    for name, raw in command_line.items():
        option = BY_NAME[name]
        if isinstance(raw, list):
            values[name] = [_parsed(option.flag, option.parse, item) for item in raw]
        else:
            values[name] = _parsed(option.flag, option.from_text, raw)
        sources[name] = "command line"
    return Settings(values, sources, warnings)


def _parsed(where: str, parse: Callable[[Any], Any], raw: Any) -> Any:
    try:
        return parse(raw)
    except OptionValueError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigurationError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None
    values = {}
    for key, value in document.items():
        option = BY_NAME.get(key)
        if option is None:
            hint = key.replace("_", "-")
            also = f" (did you mean {hint!r}?)" if hint in BY_NAME else ""
            raise ConfigurationError(f"config file {path}: unknown key {key!r}{also}")
        values[key] = _parsed(f"config file {path}: {key}", option.from_toml, value)
    return values


def render_toml(settings: Settings) -> str:
    """The merged settings as a config file (unset ones as comments), for ``--print-config``."""
    lines = []
    for option in OPTIONS:
        value = settings[option.name]
        source = settings.sources[option.name]
        if value is None:
            lines.append(f"# {option.name}: not set ({option.unset})")
            continue
        lines.append(f"{option.name} = {_toml_value(option.name, value)}  # {source}")
    return "\n".join(lines)


def _toml_value(name: str, value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(name, item) for item in value) + "]"
    if isinstance(value, Bind):
        return _toml_string(value.text)
    if name == "unix-mode":
        return f'"{value:04o}"'
    if isinstance(value, (int, float)):
        return repr(value)
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\0", "\\u0000")
    return f'"{escaped}"'
