"""Drop-in fronts with the APIs of other influence libraries, built on wherefrom's own pieces.

- :mod:`wherefrom.compat.torch_influence`: the API of torch-influence 0.1 (``BaseObjective``,
  ``AutogradInfluenceModule``, ``CGInfluenceModule``, ``LiSSAInfluenceModule``).
- :mod:`wherefrom.compat.ptif`: the API of pytorch_influence_functions (``calc_img_wise``,
  ``calc_all_grad_then_test``, ``get_default_config``, ``init_logging``).

Code written for those libraries runs with only its import line changed; each module's docstring states how its
numbers map to wherefrom's scores, and ``docs/migration.md`` shows the native equivalents.
"""
