"""traker 0.3.2 (TRAK's package): ``TRAKer`` with one checkpoint on CPU.

On CPU TRAKer uses its ``BasicProjector`` (Gaussian projection; the CUDA ``fast_jl`` projector needs a GPU). We set
``proj_dim = PROJ_DIM`` and ``use_half_precision=False`` (float16 matrix products are not a sensible CPU default);
``lambda_reg`` stays 0 as in wherefrom and dattri. ``finalize_scores`` returns ``[n_train, n_test]``, positive =
helpful. Its features and scores live in a temporary ``save_dir``.
"""

from __future__ import annotations

import logging
import tempfile

import torch
from common import GRAD_BATCH, PROJ_DIM, Context


def trak(ctx: Context):
    from trak import TRAKer

    model = ctx.model()
    n, m = len(ctx.y_train), len(ctx.y_test)
    with tempfile.TemporaryDirectory() as out:
        traker = TRAKer(model=model, task="image_classification", train_set_size=n, save_dir=out, device="cpu",
                        proj_dim=PROJ_DIM, use_half_precision=False, logging_level=logging.WARNING)
        traker.load_checkpoint(ctx.state, model_id=0)
        for x, y in ctx.loader("train", GRAD_BATCH):
            traker.featurize(batch=(x, y), num_samples=len(y))
        traker.finalize_features()
        traker.start_scoring_checkpoint(exp_name="peers", checkpoint=ctx.state, model_id=0, num_targets=m)
        for x, y in ctx.loader("test", GRAD_BATCH):
            traker.score(batch=(x, y), num_samples=len(y))
        scores = traker.finalize_scores(exp_name="peers")
    return torch.as_tensor(scores), {}


METHODS = {"trak": trak}
