"""Hierarchical mixture of experts (HME) learned by Method 1: spectral regressors,
EM over the tree's gates, then joint EM."""

from __future__ import annotations

from dataclasses import replace
from itertools import permutations
from typing import ClassVar

import numpy as np

from moelearn import _validation as v
from moelearn._em import em
from moelearn._model import MoEParams
from moelearn._passes import take_rows
from moelearn.estimators import SpectralMoE

Array = np.ndarray

__all__ = ["HierarchicalMoE", "leaf_arrangements"]

MAX_DEPTH = 3
# Rows and EM iterations used to compare the ways of arranging the experts on the
# leaves; each arrangement's gate is then only screened, not fitted.
_SCREEN_ROWS, _SCREEN_ITER = 100_000, 20
_SCREEN_ROWS_MANY, _SCREEN_ITER_MANY = 20_000, 10
#: With many arrangements (depth 3: 315), how many go on to move their experts.
_SCREEN_KEEP = 12


class HierarchicalMoE(SpectralMoE):
    r"""Hierarchical mixture of experts (binary tree of sigmoid gates), Method 1.

    .. math::
        P(y \mid x) = \sum_{l=1}^{2^D} \pi_l(x)\, \mathcal{N}(y \mid g(a_l^\top x),
        \sigma^2), \qquad \pi_l(x) = \prod_{t \in \mathrm{path}(l)}
        \sigma(\pm v_t^\top x),

    a complete binary tree of depth ``D`` whose internal node ``t`` (heap order:
    root 0, children ``2t + 1`` left and ``2t + 2`` right) sends ``x`` left with
    probability ``sigmoid(v_t . x)``; leaf ``l`` (left to right) holds expert ``l``.

    ``fit`` recovers the ``2^D`` regressors with the spectral step of
    :class:`SpectralMoE` (any gate gives ``T2``, ``T3`` of the same form, though for
    more than two experts with correlated gates the moments carry cross terms, so
    the start is near, not at, the truth). The spectral step does not say which
    experts share a parent: every distinct arrangement of the experts on the leaves
    (3 at depth 2, 315 at depth 3) gets a short gating EM on a subsample, the most
    likely one a full gating EM (Jordan & Jacobs' M-step: a weighted logistic
    regression per node, Newton steps) and, with ``refine=True``, joint EM. The
    refined regressors are screened once more; if another arrangement fits them
    better (the spectral start was poor), it is refined too and the more likely
    fit kept.

    Parameters
    ----------
    depth : int, default=2
        Levels of gates; ``2^depth`` experts (at most ``n_features``). ``depth=1``
        is the 2-expert model of :class:`SpectralMoE`.
    link, noise_std, noise_type, refine
        As in :class:`SpectralMoE`.
    fit_intercept : bool, default=False
        As in :class:`SpectralMoE`; every node of the tree gets a bias
        (``gating_intercept_``, shape (2^depth - 1,)).
    extra_starts, input_density, max_iter, tol, n_init, random_state, verbose
        As in :class:`SpectralMoE` (a tree keeps all its leaves: no expert is
        dropped).

    Attributes
    ----------
    experts_ : ndarray of shape (2^depth, n_features)
        Regressors of the leaves, left to right.
    gating_ : ndarray of shape (2^depth - 1, n_features)
        Node vectors ``v_t`` in heap order.
    noise_std_, spectral_experts_, converged_, n_iter_, log_likelihood_curve_,
    diagnostics_, fit_times_, n_features_in_
        As in :class:`SpectralMoE`; ``diagnostics_['arrangement_log_likelihoods']``
        holds the screened arrangements' mean log-likelihoods, ``'rescreened_log_likelihoods'``
        those with the refined regressors (the first is the fitted arrangement).

    References
    ----------
    Jordan, Jacobs, "Hierarchical mixtures of experts and the EM algorithm",
    Neural Computation 6 (1994). Makkuva, Oh, Kannan, Viswanath, ICML 2019.

    Examples
    --------
    >>> from moelearn import HierarchicalMoE, make_hme, parameter_error
    >>> X, y, truth = make_hme(100_000, 6, depth=2, random_state=0)
    >>> model = HierarchicalMoE(depth=2, random_state=0).fit(X, y)
    >>> parameter_error(model, truth, experts_only=True) < 0.1
    True
    """

    _gate = "tree"
    _restart_from_spectral = False  # refinement starts from the screened experts
    _one_expert_per_feature = True

    _parameter_constraints: ClassVar[dict] = {
        **{
            name: rule
            for name, rule in SpectralMoE._parameter_constraints.items()
            if name != "n_experts"
        },
        "depth": v.integer(1, MAX_DEPTH),
    }

    def __init__(
        self,
        depth: int = 2,
        *,
        link: str = "linear",
        noise_std: float | None = None,
        noise_type: str = "shared",
        refine: bool = True,
        fit_intercept: bool = False,
        extra_starts: str = "auto",
        input_density="gaussian",
        max_iter: int = 200,
        tol: float = 1e-4,
        n_init: int = 10,
        random_state=None,
        verbose: int = 0,
    ):
        self.depth = depth
        self.link = link
        self.noise_std = noise_std
        self.noise_type = noise_type
        self.refine = refine
        self.fit_intercept = fit_intercept
        self.extra_starts = extra_starts
        self.input_density = input_density
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.random_state = random_state
        self.verbose = verbose

    @property
    def n_experts(self) -> int:  # type: ignore[override]  # (from depth, not set)
        """``2^depth`` leaves."""
        return 2 ** int(self.depth)

    def _gating_stage(self, ctx, params, gating_em) -> MoEParams:
        # Score each arrangement after the experts too have moved (with refine):
        # with the spectral start's bias, the gate alone can favour a wrong one.
        scores, screened = self._screen(ctx, params, move_experts=self.refine)
        best = int(np.argmax(scores))
        ctx.diagnostics["arrangement_log_likelihoods"] = scores
        return gating_em(screened[best])

    def _second_start(self, ctx, params) -> MoEParams | None:
        # When the spectral start was poor (k = d, or a weak T2 eigenvalue), the
        # screen compared arrangements of wrong regressors; refinement usually
        # still finds the right ones. Screened again with those, a different
        # arrangement that fits better is refined too.
        scores, screened = self._screen(ctx, params, move_experts=False)
        best = int(np.argmax(scores))  # arrangement 0 keeps the refined order
        ctx.diagnostics["rescreened_log_likelihoods"] = scores
        return screened[best] if best != 0 else None

    def _screen(
        self, ctx, params: MoEParams, *, move_experts: bool
    ) -> tuple[list[float], list[MoEParams]]:
        """Mean log-likelihood reached by every arrangement of ``params.experts`` on
        the leaves after a short EM from a zero gate on a subsample (gate only, then
        also the experts if ``move_experts``), and the parameters reached."""
        arrangements = leaf_arrangements(self.n_experts)
        X, y = ctx.X_em, ctx.y
        n = X.shape[0]
        many = len(arrangements) > 3
        rows = min(n, _SCREEN_ROWS_MANY if many else _SCREEN_ROWS)
        max_iter = _SCREEN_ITER_MANY if many else _SCREEN_ITER
        subset = (
            slice(None)
            if rows == n
            else np.sort(ctx.rng.choice(n, size=rows, replace=False))
        )
        Xs, ys = take_rows(X, subset), y[subset]
        weights = ctx.sample_weight
        settings = {
            "fit_noise": self.noise_std is None,
            "moments": ctx.moments,
            "sample_weight": None if weights is None else weights[subset],
            "max_iter": max_iter,
            "tol": 1e-2,
            "rng": ctx.rng,
        }
        start = replace(params, gating=np.zeros_like(params.gating))
        scores, screened = [], []
        for order in arrangements:
            arranged = replace(start, experts=params.experts[list(order)])
            result = em(Xs, ys, arranged, fit_experts=False, **settings)
            scores.append(result.final_log_likelihood)
            screened.append(result.params)
        if move_experts:
            # With many arrangements only the best by the gate alone go on (EM
            # raises the likelihood, so the best after moving is among them).
            finalists = np.argsort(scores)[::-1][:_SCREEN_KEEP]
            for i in finalists if many else range(len(scores)):
                result = em(Xs, ys, screened[i], fit_experts=True, **settings)
                scores[i], screened[i] = result.final_log_likelihood, result.params
        best = int(np.argmax(scores))
        self._log(
            1,
            f"screened {len(arrangements)} arrangements of the experts on the leaves "
            f"({rows} rows): best mean log-likelihood {scores[best]:.4f}",
        )
        return scores, screened


def leaf_arrangements(n_leaves: int) -> list[tuple[int, ...]]:
    """Orders of the experts on the leaves, one per class of equivalent trees.

    Swapping a node's two subtrees (and negating its vector) gives the same model,
    so the ``k!`` orders fall into ``k! / 2^(k-1)`` classes: 3 for 4 leaves, 315
    for 8. Each class is represented by its first order in lexicographic order.
    """

    def shape(order: tuple[int, ...]):
        if len(order) == 1:
            return order[0]
        half = len(order) // 2
        return tuple(sorted((shape(order[:half]), shape(order[half:])), key=repr))

    seen, out = set(), []
    for order in permutations(range(n_leaves)):
        key = shape(order)
        if key not in seen:
            seen.add(key)
            out.append(order)
    return out
