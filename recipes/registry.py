"""Methods by name: `register_recipe` adds one (a `recipes.base.Recipe` subclass), `get_recipe`
finds it (`config.json`'s "method", a Config's `METHOD`). The recipes of this package
(`recipes/<name>.py`, a new method is a new such file) are imported when first asked for, so
that importing one module of the research floor does not import every method."""
from __future__ import annotations

import importlib
import pkgutil

from recipes.base import Recipe

RECIPES: dict[str, Recipe] = {}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    """Class decorator: register one instance of `cls` under `cls.name`."""
    if cls.name in RECIPES:
        raise ValueError(f"a recipe named {cls.name!r} is registered already")
    if cls.Config.METHOD != cls.name:
        raise ValueError(f"{cls.__name__}.Config.METHOD is {cls.Config.METHOD!r}, not {cls.name!r}")
    RECIPES[cls.name] = cls()
    return cls


def recipe_names() -> list[str]:
    """Every method: this package's and those registered elsewhere."""
    import recipes
    for module in pkgutil.iter_modules(recipes.__path__):
        importlib.import_module(f"recipes.{module.name}")
    return list(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe registered as `name` (`recipes/<name>.py` is imported for it); ValueError
    listing the known ones."""
    if name not in RECIPES and name.isidentifier():
        try:
            importlib.import_module(f"recipes.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"recipes.{name}":
                raise  # the recipe's module is there but imports something missing
    if name not in RECIPES:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(recipe_names())}")
    return RECIPES[name]


def recipe_of(cfg: object) -> Recipe:
    """The recipe whose settings `cfg` is (its class's `METHOD`)."""
    return get_recipe(type(cfg).METHOD)
