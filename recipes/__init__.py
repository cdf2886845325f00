"""The methods, one recipe each (`base.Recipe`: model, loss and its schedule, optimizer and
lr schedule, anomaly map and score, metrics, settings, the published numbers), registered by
name. Dinomaly is `recipes.dinomaly`."""
from recipes.base import IMAGE_AND_PIXEL_METRICS, Optimization, Recipe, Reference
from recipes.registry import RECIPES, get_recipe, recipe_names, recipe_of, register_recipe

__all__ = ["IMAGE_AND_PIXEL_METRICS", "Optimization", "RECIPES", "Recipe", "Reference",
           "get_recipe", "recipe_names", "recipe_of", "register_recipe"]
