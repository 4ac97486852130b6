"""kronfluence 1.0.1: K-FAC and EK-FAC factors (``FactorArguments(strategy=...)``) and pairwise scores.

The task's training loss is the summed cross-entropy (labels sampled from the model for the factors, kronfluence's
true-Fisher default); the measurement is the summed test cross-entropy. Pairwise scores ``[n_test, n_train]`` are
``q_jᵀ (F + d I)⁻¹ g_i`` with ``F`` averaged over examples: ``n`` times wherefrom's scale, same sign (positive =
helpful). ``damping_factor = wd + λ`` (absolute). Float64 settings get float64 factor and score dtypes (kronfluence
defaults to float32 covariances); float32 settings use its defaults.
"""

from __future__ import annotations

import logging
import tempfile

import torch
import torch.nn.functional as F
from common import GRAD_BATCH, Context


def _run(ctx: Context, strategy: str) -> torch.Tensor:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), dim=-1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return F.cross_entropy(model(x), y, reduction="sum")

    task = Classification()
    model = prepare_model(ctx.model(), task)
    f64 = ctx.dtype == torch.float64
    factor_kw = {"strategy": strategy}
    score_kw = {"damping_factor": ctx.peer_damping}
    if f64:
        factor_kw.update(activation_covariance_dtype=torch.float64, gradient_covariance_dtype=torch.float64,
                         lambda_dtype=torch.float64)
        score_kw.update(score_dtype=torch.float64, per_sample_gradient_dtype=torch.float64,
                        precondition_dtype=torch.float64)
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer(analysis_name="peers", model=model, task=task, cpu=True, output_dir=out,
                            disable_tqdm=True, disable_model_save=True)
        logging.getLogger("kronfluence").setLevel(logging.WARNING)
        analyzer.fit_all_factors(factors_name=strategy, dataset=ctx.train_set(), per_device_batch_size=GRAD_BATCH,
                                 factor_args=FactorArguments(**factor_kw), overwrite_output_dir=True)
        analyzer.compute_pairwise_scores(scores_name="s", factors_name=strategy, query_dataset=ctx.test_set(),
                                         train_dataset=ctx.train_set(), per_device_query_batch_size=len(ctx.y_test),
                                         per_device_train_batch_size=GRAD_BATCH,
                                         score_args=ScoreArguments(**score_kw), overwrite_output_dir=True)
        scores = analyzer.load_pairwise_scores("s")["all_modules"]
    return scores.T / len(ctx.y_train)


def kfac(ctx):
    return _run(ctx, "kfac"), {}


def ekfac(ctx):
    return _run(ctx, "ekfac"), {}


METHODS = {"kfac": kfac, "ekfac": ekfac}
