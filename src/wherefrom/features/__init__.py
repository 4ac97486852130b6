"""Feature attribution: which parts of an input drove a prediction, as a hierarchy.

    import wherefrom as wf
    rel, irrel = wf.features.cd(model, x, mask)            # contextual decomposition, rel + irrel = model(x)
    h = wf.features.acd(model, x[:1], target=3)            # agglomerative CD hierarchy (1-D text / 2-D image)
    h.plot("acd.png"); h.order(); h.to_dict()

CD works on any model ``torch.fx`` can trace, with one rule per op (``register_rule`` adds more); an op without
a rule raises :class:`MissingRuleError`. Baselines: integrated gradients, gradient × input, occlusion, build-up.
See ``docs/features.md`` for the rules, the agglomeration and every choice where paper and reference code differ.
"""

from wherefrom.features.acd import acd
from wherefrom.features.agglomerate import agglomerate_1d, agglomerate_2d, per_group
from wherefrom.features.baselines import (
    block_masks,
    block_sum,
    build_up,
    gradient_times_input,
    integrated_gradients,
    occlusion,
    span_masks,
)
from wherefrom.features.hierarchy import Hierarchy, Level
from wherefrom.features.parts import Parts
from wherefrom.features.propagate import Decomposer, Decomposition, cd
from wherefrom.features.registry import (
    DecompositionError,
    MissingRuleError,
    register_rule,
    registered_targets,
    unregister_rule,
)
from wherefrom.features.scoring import GroupScorer

__all__ = [
    "Decomposer",
    "Decomposition",
    "DecompositionError",
    "GroupScorer",
    "Hierarchy",
    "Level",
    "MissingRuleError",
    "Parts",
    "acd",
    "agglomerate_1d",
    "agglomerate_2d",
    "block_masks",
    "block_sum",
    "build_up",
    "cd",
    "gradient_times_input",
    "integrated_gradients",
    "occlusion",
    "per_group",
    "register_rule",
    "registered_targets",
    "span_masks",
    "unregister_rule",
]
