"""dyva-worldlm: World-Language Models (DyVA) in a prismatic-vlms-style framework.

`from prismatic import load` gives a trained VLM from a run directory or the authors' released checkpoints.
"""

from prismatic.models.load import available_model_ids, available_model_names, get_model_description, load

__all__ = ["available_model_ids", "available_model_names", "get_model_description", "load"]
