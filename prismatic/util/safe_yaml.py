"""Config files are data: every YAML file draccus reads in this process goes through PyYAML's safe loader.

draccus' default loader (`FullLoader`) refuses `!!python/object/apply` but still resolves `!!python/name:...` to live
Python objects; a `--config_path` file from someone else must only ever yield plain data. `prismatic/__init__.py`
installs this on import, so every entry point and library caller gets it (draccus' own `!include` keeps working).
"""

from __future__ import annotations

from typing import IO, Any


def safe_yaml_load_config(stream: IO[str] | str) -> Any:
    """draccus' YAML `load_config` with the safe loader: plain YAML types only; a Python tag raises yaml's
    ConstructorError, which draccus reports as a ParsingError naming the file."""
    import yaml
    from draccus.parsers.yaml_loader import SafeLoaderWithInclusion

    return yaml.load(stream, SafeLoaderWithInclusion)  # a SafeLoader subclass: safe constructors only


def install_safe_yaml_loader() -> None:
    from draccus.parsers.config_parsers import YAMLParser

    YAMLParser.load_config = staticmethod(safe_yaml_load_config)  # type: ignore[method-assign]
