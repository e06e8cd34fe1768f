"""Annealed mean-field theory of BP denoising on the Random Hierarchy Model (paper §4).

Leaves carry the uniformly corrupted message ``(1 - eps) delta(a, x0) + eps / v``, i.e.
probability ``p_L = 1 - eps + eps / v`` on the correct symbol and ``(1 - p_L) / (v - 1)`` on
each wrong one. The theory replaces every BP message by its average over the random rules,
keeping the same two-valued structure (``p`` on the correct symbol, the rest spread
uniformly), and iterates:

- **upward** (level ``l+1 -> l``), with ``V = v**s`` and ``q = (1 - p**s) / (V - 1)`` the
  average product of the children's messages over a random tuple other than the true one::

      p_l = (p**s + (m - 1) q) / (p**s + (n_l m - 1) q)        n_l = v (n_classes at the root)

- **downward** (parent's outside message ``rho_l`` -> child), with
  ``q' = (1 - p**(s-1)) / (V - 1)`` and ``p = p_{l+1}`` the siblings' upward probability::

      D_correct = rho p**(s-1) + rho (m - 1) q' + (1 - rho) m q'
      D_wrong   = (rho (m - 1) + (1 - rho) m) / (V - 1)
      rho_{l+1} = D_correct / (D_correct + (v - 1) D_wrong),       rho_0 = 1 / n_classes

- **marginal** (up x down): ``mu_l = p rho / (p rho + (1 - p)(1 - rho) / (n_l - 1))``.

The upward map has the fixed points ``p = 1`` (slope ``s m (v - 1) / (V - 1)``, about
``s f``) and ``p = 1 / v`` (slope ``s (v - 1) v**(s-1) / (m (V - 1))``, about ``s / m``);
when both are stable a repulsive fixed point ``p*`` in between separates the basins and the
critical noise is ``eps* = (1 - p*) v / (v - 1)``. See ``docs/meanfield.md`` for the
derivation and for the measured agreement with exact BP.

Everything here is plain numpy/scipy. The exact-BP simulation the theory is compared with
(:func:`bp_reconstruction`, :func:`crossing`, :class:`Simulation`) lives in
:mod:`hiergen.inference.meanfield_sim` and is re-exported here, imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hiergen._lazy import attach
from hiergen.models._validate import check_int
from hiergen.models.errors import ConfigError, EvidenceError, GrammarError
from hiergen.models.rhm import check_rhm_feasible

if TYPE_CHECKING:
    from hiergen.inference.meanfield_sim import Simulation as Simulation
    from hiergen.inference.meanfield_sim import bp_reconstruction as bp_reconstruction
    from hiergen.inference.meanfield_sim import crossing as crossing

# the BP simulation, re-exported lazily (meanfield_sim imports this module's checks)
__getattr__ = attach(__name__, {"meanfield_sim": ["Simulation", "bp_reconstruction", "crossing"]})[0]

#: Regime names returned by :func:`regime` and :func:`phase_diagram` (index = integer code).
REGIMES = ("transition", "unrecoverable", "always-recoverable", "partial")
_STABILITY_TOL = 1e-9


# ---------------------------------------------------------------------------- checks
def _int(value: Any, name: str, minimum: int) -> int:
    return check_int(value, name, minimum, error=GrammarError)


def check_params(v: int, m: int, s: int, n_classes: int | None = None) -> tuple[int, int, int, int]:
    """Validate RHM sizes for the theory; returns ``(v, m, s, n_classes)``.

    Raises :class:`GrammarError` when a size is not an integer, ``v < 2``, ``s < 2`` (for
    ``s = 1`` the map is the identity) or the rules do not fit among the ``v**s`` tuples
    (``v m > v**s`` or ``n_classes m > v**s``).
    """
    v = _int(v, "v", 2)
    m = _int(m, "m", 1)
    s = _int(s, "s", 2)
    n_classes = v if n_classes is None else _int(n_classes, "n_classes", 2)
    check_rhm_feasible(v, n_classes, m, s)
    return v, m, s, n_classes


def _check_eps(eps: Any) -> np.ndarray:
    arr = np.asarray(eps, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0.0) or np.any(arr > 1.0):
        bad = arr[~(np.isfinite(arr) & (arr >= 0) & (arr <= 1))]
        raise EvidenceError(f"eps must be in [0, 1], got {bad.ravel()[:5].tolist()}")
    return arr


def _check_prob(p: Any, name: str = "p") -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0.0) or np.any(arr > 1.0):
        raise EvidenceError(f"{name} must be a probability in [0, 1], got {arr.ravel()[:5].tolist()}")
    return arr


# ---------------------------------------------------------------------------- maps
def leaf_prob(eps: Any, v: int) -> np.ndarray:
    """``p_L = 1 - eps + eps / v``: the leaf message on the correct symbol (same shape as eps)."""
    eps = _check_eps(eps)
    return 1.0 - eps + eps / v


def eps_from_prob(p: Any, v: int) -> np.ndarray:
    """Inverse of :func:`leaf_prob`: ``eps = (1 - p) v / (v - 1)`` (same shape as ``p``)."""
    p = _check_prob(p)
    return (1.0 - p) * v / (v - 1)


def upward_map(p: Any, v: int, m: int, s: int, n_parent: int | None = None) -> np.ndarray:
    """One annealed upward step: children's correct-symbol probability ``p`` -> parent's.

    ``p_parent = (p**s + (m-1) q) / (p**s + (n_parent m - 1) q)``, ``q = (1-p**s)/(v**s-1)``;
    ``n_parent`` is the parent alphabet (``v``, or ``n_classes`` at the root). Vectorised.
    """
    v, m, s, n_parent = check_params(v, m, s, n_parent)
    p = _check_prob(p)
    ps = p**s
    with np.errstate(divide="ignore"):
        one_minus = -np.expm1(s * np.log(np.maximum(p, 1e-300)))
    q = np.where(p > 0, one_minus, 1.0) / (v**s - 1)
    return (ps + (m - 1) * q) / (ps + (n_parent * m - 1) * q)


def upward_slope(p: Any, v: int, m: int, s: int, n_parent: int | None = None) -> np.ndarray:
    """Derivative ``d p_parent / d p`` of :func:`upward_map` (vectorised)."""
    v, m, s, n_parent = check_params(v, m, s, n_parent)
    p = _check_prob(p)
    big_v = v**s - 1
    ps = p**s
    q = (1.0 - ps) / big_v
    num, den = ps + (m - 1) * q, ps + (n_parent * m - 1) * q
    d = s * p ** (s - 1)
    dnum, dden = d * (1 - (m - 1) / big_v), d * (1 - (n_parent * m - 1) / big_v)
    return (dnum * den - num * dden) / den**2


def downward_map(rho: Any, p: Any, v: int, m: int, s: int) -> np.ndarray:
    """One annealed downward step: parent's outside probability ``rho`` -> child's.

    ``p`` is the upward probability of the ``s - 1`` siblings (level of the child). The
    result does not depend on the parent alphabet. Broadcasts ``rho`` against ``p``.
    """
    v, m, s, _ = check_params(v, m, s)
    rho, p = _check_prob(rho, "rho"), _check_prob(p)
    big_v = v**s - 1
    ps1 = p ** (s - 1)
    q1 = (1.0 - ps1) / big_v
    d_correct = rho * ps1 + rho * (m - 1) * q1 + (1 - rho) * m * q1
    d_wrong = (rho * (m - 1) + (1 - rho) * m) / big_v
    return d_correct / (d_correct + (v - 1) * d_wrong)


def combine(p_up: Any, rho: Any, n: int) -> np.ndarray:
    """Marginal on the correct symbol from the upward ``p_up`` and downward ``rho`` (alphabet n).

    ``mu = p rho / (p rho + (1 - p)(1 - rho) / (n - 1))`` (vectorised).
    """
    p_up, rho = np.asarray(p_up, dtype=np.float64), np.asarray(rho, dtype=np.float64)
    a = p_up * rho
    b = (1.0 - p_up) * (1.0 - rho) / (n - 1)
    return a / (a + b)


# ---------------------------------------------------------------------------- fixed points
@dataclass(frozen=True)
class FixedPoint:
    """A fixed point ``p`` of the bulk upward map (parent alphabet ``v``).

    ``eps`` is the leaf noise with ``leaf_prob(eps) = p``; ``slope`` the map's derivative
    there; ``stable`` is ``|slope| < 1``.
    """

    p: float
    eps: float
    slope: float
    stable: bool


def slope_at_one(v: int, m: int, s: int) -> float:
    """Slope of the upward map at ``p = 1``: ``s m (v - 1) / (v**s - 1)`` (about ``s f``)."""
    v, m, s, _ = check_params(v, m, s)
    return s * m * (v - 1) / (v**s - 1)


def slope_at_uniform(v: int, m: int, s: int) -> float:
    """Slope at ``p = 1/v``: ``s (v - 1) v**(s-1) / (m (v**s - 1))`` (about ``s / m``)."""
    v, m, s, _ = check_params(v, m, s)
    return s * (v - 1) * v ** (s - 1) / (m * (v**s - 1))


def fixed_points(v: int, m: int, s: int, grid: int = 4000) -> list[FixedPoint]:
    """All fixed points of the bulk upward map on ``[1/v, 1]``, ascending in ``p``.

    Always contains ``p = 1/v`` and ``p = 1``; interior ones are located by a sign change of
    ``F(p) - p`` on a ``grid``-point mesh (denser near the ends) and refined with Brent's
    method.
    """
    from scipy.optimize import brentq

    v, m, s, _ = check_params(v, m, s)

    def gap(x: np.ndarray | float) -> np.ndarray:
        return upward_map(x, v, m, s) - x

    lo = 1.0 / v
    u = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, grid + 2)[1:-1])  # Chebyshev-like mesh
    xs = lo + (1.0 - lo) * u
    g = gap(xs)
    found = [(lo, slope_at_uniform(v, m, s))]
    for i in np.flatnonzero(np.sign(g[:-1]) * np.sign(g[1:]) < 0):
        root = brentq(lambda x: float(gap(x)), xs[i], xs[i + 1], xtol=1e-14, rtol=1e-13)
        found.append((root, float(upward_slope(root, v, m, s))))
    found.append((1.0, slope_at_one(v, m, s)))
    return [
        FixedPoint(p=float(p), eps=float(eps_from_prob(p, v)), slope=float(sl),
                   stable=bool(abs(sl) < 1.0 - _STABILITY_TOL))
        for p, sl in found
    ]


def regime(v: int, m: int, s: int) -> str:
    """Large-depth behaviour of the class for leaf noise ``0 < eps < 1``.

    - ``"transition"``: ``p = 1`` and ``p = 1/v`` both stable; the class is recovered for
      ``eps < eps*`` and lost (chance level) for ``eps > eps*``.
    - ``"unrecoverable"``: ``p = 1`` unstable (``s m (v-1) / (v**s-1) > 1``, about ``s f > 1``)
      and ``p = 1/v`` stable: the class is lost at any noise.
    - ``"always-recoverable"``: ``p = 1`` stable and ``p = 1/v`` unstable (``m`` below about
      ``s``): any information is amplified and the class is recovered at any ``eps < 1``.
    - ``"partial"``: both unstable; the root converges to an intermediate probability.
    """
    one, uni = slope_at_one(v, m, s) < 1.0, slope_at_uniform(v, m, s) < 1.0
    if one and uni:
        return "transition"
    if uni:
        return "unrecoverable"
    if one:
        return "always-recoverable"
    return "partial"


def transition_exists(v: int, m: int, s: int) -> bool:
    """True when the theory predicts a sharp class transition as ``L -> inf``.

    Condition: ``s m (v - 1) < v**s - 1`` (``p = 1`` stable; about ``s f < 1``) **and**
    ``s (v - 1) v**(s-1) < m (v**s - 1)`` (``p = 1/v`` stable; about ``m > s``).
    """
    return regime(v, m, s) == "transition"


def critical_eps(v: int, m: int, s: int) -> float:
    """Critical leaf noise ``eps*(v, m, s)``, or NaN where no transition exists.

    ``eps* = (1 - p*) v / (v - 1)`` with ``p*`` the largest fixed point below 1: it bounds
    the basin of attraction of ``p = 1``. For any finite depths ``L != L'`` the theory's root
    curves cross exactly at ``eps*`` (the map is monotone), which is how it is measured in
    BP simulations.
    """
    if not transition_exists(v, m, s):
        return float("nan")
    interior = [fp for fp in fixed_points(v, m, s) if 1.0 / v < fp.p < 1.0]
    if not interior:  # pragma: no cover - both ends stable implies a root in between
        return float("nan")
    return interior[-1].eps


# ---------------------------------------------------------------------------- large-v limit
def upward_map_large_v(p: Any, f: float, s: int) -> np.ndarray:
    """Upward map for ``v -> inf`` at fixed ``f = m / v**(s-1)``: ``p**s / (p**s + f (1 - p**s))``."""
    p = _check_prob(p)
    f, s = _check_f(f), _int(s, "s", 2)
    ps = p**s
    return ps / (ps + f * (1.0 - ps))


def _check_f(f: Any) -> float:
    f = float(f)
    if not 0.0 < f <= 1.0:
        raise GrammarError(f"f = m / v**(s-1) must be in (0, 1], got {f}")
    return f


def critical_eps_large_v(f: float, s: int) -> float:
    """``eps*`` for ``v -> inf`` at fixed ``f``: ``1 - p*`` with ``p*`` the interior fixed point
    of :func:`upward_map_large_v`; NaN when ``s f >= 1``. For ``s = 2``: ``(1 - 2f) / (1 - f)``.
    """
    from scipy.optimize import brentq

    f, s = _check_f(f), _int(s, "s", 2)
    if s * f >= 1.0:
        return float("nan")

    def gap(x: float) -> float:
        return float(upward_map_large_v(x, f, s)) - x

    # F(p) < p near 0 (slope 0) and F(p) > p near 1 (slope s f < 1): bracket the last root
    xs = np.linspace(1e-6, 1.0 - 1e-6, 2001)
    g = upward_map_large_v(xs, f, s) - xs
    i = np.flatnonzero(np.sign(g[:-1]) * np.sign(g[1:]) < 0)[-1]
    root = brentq(gap, xs[i], xs[i + 1], xtol=1e-14)
    return 1.0 - root


# ---------------------------------------------------------------------------- predictions
@dataclass(frozen=True)
class LevelPrediction:
    """Theory's probability of the correct value per level (level 0 = root, L = leaves).

    Arrays have shape ``eps.shape + (L + 1,)``:

    - ``up``: normalised upward message (posterior of a node from its own subtree's evidence);
    - ``down``: normalised downward message (from the evidence outside the subtree);
    - ``marginal``: the BP marginal (up x down), the probability of reconstruction.
    ``time`` is set by :func:`predict_time`.
    """

    eps: np.ndarray
    up: np.ndarray
    down: np.ndarray
    marginal: np.ndarray
    params: dict[str, int] = field(default_factory=dict)
    time: np.ndarray | None = None

    @property
    def L(self) -> int:
        return self.up.shape[-1] - 1

    @property
    def root(self) -> np.ndarray:
        """Probability of the correct class, shape ``eps.shape``."""
        return self.marginal[..., 0]


def predict(eps: Any, v: int, m: int, s: int, L: int, n_classes: int | None = None) -> LevelPrediction:
    """Annealed predictions at every level for leaf noise ``eps`` (scalar or any shape).

    Upward pass from ``p_L = leaf_prob(eps)``; downward pass from ``rho_0 = 1 / n_classes``
    (uniform class prior); marginals by :func:`combine`. ``n_classes`` defaults to ``v``.
    """
    v, m, s, n_classes = check_params(v, m, s, n_classes)
    L = _int(L, "L", 1)
    eps = _check_eps(eps)
    up = [leaf_prob(eps, v)]
    for lev in range(L - 1, -1, -1):
        up.append(upward_map(up[-1], v, m, s, n_classes if lev == 0 else v))
    up = up[::-1]
    down = [np.full(eps.shape, 1.0 / n_classes)]
    for lev in range(1, L + 1):
        down.append(downward_map(down[-1], up[lev], v, m, s))
    sizes = [n_classes] + [v] * L
    marg = [combine(up[lev], down[lev], sizes[lev]) for lev in range(L + 1)]
    return LevelPrediction(
        eps=eps,
        up=np.stack(up, -1),
        down=np.stack(down, -1),
        marginal=np.stack(marg, -1),
        params={"v": v, "m": m, "s": s, "L": L, "n_classes": n_classes},
    )


# ---------------------------------------------------------------------------- diffusion time
_STATISTICS = ("geometric", "mean")


def gaussian_leaf_prob(
    t: Any, v: int, schedule: Any = None, statistic: str = "geometric",
    n_samples: int = 20000, seed: int = 0,
) -> np.ndarray:
    """Typical leaf message on the correct symbol under DDPM Gaussian diffusion at time ``t``.

    The leaf message is ``mu = softmax_a(snr delta(a, x0) + sqrt(snr) xi_a)`` at ``a = x0``
    with ``snr = abar_t / (1 - abar_t)`` (the exact leaf likelihood of
    :class:`~hiergen.models.noise.GaussianDiffusion`), ``xi ~ N(0, I_v)``. Returns
    ``exp(E[log mu])`` (``statistic="geometric"``, default) or ``E[mu]`` (``"mean"``), by
    Monte Carlo over ``n_samples`` draws from ``numpy.random.default_rng(seed)`` — the same
    draws for every ``t``, so the result is smooth and monotone in ``t``. Shape of ``t``.
    """
    from hiergen.models.noise import DDPMSchedule

    if statistic not in _STATISTICS:
        raise ConfigError(f"statistic must be one of {_STATISTICS}, got {statistic!r}")
    schedule = DDPMSchedule() if schedule is None else schedule
    v = _int(v, "v", 2)
    n_samples = _int(n_samples, "n_samples", 1)
    t = np.asarray(t, dtype=np.float64)
    snr = np.atleast_1d(schedule.snr(t)).ravel()  # raises EvidenceError outside [0, T]
    xi = np.random.default_rng(seed).standard_normal((n_samples, v))
    out = np.empty(snr.shape)
    for k, r in enumerate(snr):
        if not np.isfinite(r):
            out[k] = 1.0
            continue
        z = np.sqrt(r) * xi
        z[:, 0] += r
        z -= z.max(1, keepdims=True)
        log_mu = z[:, 0] - np.log(np.exp(z).sum(1))
        out[k] = float(np.exp(log_mu.mean()) if statistic == "geometric" else np.exp(log_mu).mean())
    return out.reshape(t.shape)


def eps_of_time(
    t: Any, v: int, schedule: Any = None, statistic: str = "geometric",
    n_samples: int = 20000, seed: int = 0,
) -> np.ndarray:
    """Effective uniform corruption at diffusion time ``t``.

    The ``eps`` whose leaf message ``1 - eps + eps / v`` equals the typical Gaussian leaf
    message :func:`gaussian_leaf_prob` (geometric mean by default: the upward map sees the
    leaves only through products of their messages, whose typical size is set by
    ``E[log mu]``; ``statistic="mean"`` matches the arithmetic mean instead and places the
    transition too late — see ``docs/meanfield.md``). Clipped to ``[0, 1]``.
    """
    p = gaussian_leaf_prob(t, v, schedule, statistic, n_samples, seed)
    return np.clip((1.0 - p) * v / (v - 1), 0.0, 1.0)


def predict_time(
    t: Any, v: int, m: int, s: int, L: int, n_classes: int | None = None,
    schedule: Any = None, statistic: str = "geometric", n_samples: int = 20000, seed: int = 0,
) -> LevelPrediction:
    """:func:`predict` at ``eps = eps_of_time(t)``; the result's ``time`` holds ``t``."""
    check_params(v, m, s, n_classes)
    eps = eps_of_time(t, v, schedule, statistic, n_samples, seed)
    pred = predict(eps, v, m, s, L, n_classes)
    return LevelPrediction(pred.eps, pred.up, pred.down, pred.marginal, pred.params,
                           time=np.asarray(t, dtype=np.float64))


def critical_time(
    v: int, m: int, s: int, schedule: Any = None, statistic: str = "geometric",
    n_samples: int = 20000, seed: int = 0,
) -> float:
    """Diffusion time ``t*`` with ``eps_of_time(t*) = eps*`` (NaN where no transition)."""
    from hiergen.models.noise import DDPMSchedule

    eps_star = critical_eps(v, m, s)
    if not np.isfinite(eps_star):
        return float("nan")
    schedule = DDPMSchedule() if schedule is None else schedule
    ts = np.linspace(0.0, schedule.T, 2 * schedule.T + 1)
    eps_t = eps_of_time(ts, v, schedule, statistic, n_samples, seed)
    above = np.flatnonzero(eps_t >= eps_star)
    if above.size == 0:
        return float("nan")
    i = int(above[0])
    if i == 0:
        return 0.0
    e0, e1 = eps_t[i - 1], eps_t[i]
    return float(ts[i - 1] + (ts[i] - ts[i - 1]) * (eps_star - e0) / (e1 - e0))


# ---------------------------------------------------------------------------- phase diagram
@dataclass(frozen=True)
class PhaseDiagram:
    """Theory over a ``(v, m)`` grid at fixed ``s``: arrays of shape ``(len(v), len(m))``.

    ``code`` indexes :data:`REGIMES` (-1 where ``m`` is infeasible for that ``v``), ``eps_star``
    the critical noise (NaN without a transition), ``slope_one`` / ``slope_uniform`` the
    stabilities of ``p = 1`` / ``p = 1/v``, ``f = m / v**(s-1)``.
    """

    v: np.ndarray
    m: np.ndarray
    s: int
    code: np.ndarray
    eps_star: np.ndarray
    slope_one: np.ndarray
    slope_uniform: np.ndarray
    f: np.ndarray


def phase_diagram(v_values: Sequence[int], m_values: Sequence[int], s: int) -> PhaseDiagram:
    """Regime and ``eps*`` of the theory for every ``(v, m)`` of a grid (fixed ``s``)."""
    s = _int(s, "s", 2)
    vs = np.asarray([_int(v, "v", 2) for v in v_values], dtype=np.int64)
    ms = np.asarray([_int(m, "m", 1) for m in m_values], dtype=np.int64)
    if vs.size == 0 or ms.size == 0:
        raise ConfigError("phase_diagram needs at least one v and one m")
    shape = (vs.size, ms.size)
    code = np.full(shape, -1, dtype=np.int64)
    eps_star, s1, s0 = (np.full(shape, np.nan) for _ in range(3))
    f = ms[None, :] / vs[:, None].astype(np.float64) ** (s - 1)
    for i, v in enumerate(vs):
        for j, m in enumerate(ms):
            if m * v > v**s:
                continue
            v_, m_ = int(v), int(m)
            code[i, j] = REGIMES.index(regime(v_, m_, s))
            eps_star[i, j] = critical_eps(v_, m_, s)
            s1[i, j], s0[i, j] = slope_at_one(v_, m_, s), slope_at_uniform(v_, m_, s)
    return PhaseDiagram(vs, ms, s, code, eps_star, s1, s0, f)


__all__ = [
    "REGIMES", "FixedPoint", "LevelPrediction", "PhaseDiagram", "Simulation",
    "check_params", "leaf_prob", "eps_from_prob", "upward_map", "upward_slope", "downward_map",
    "combine", "slope_at_one", "slope_at_uniform", "fixed_points", "regime",
    "transition_exists", "critical_eps", "upward_map_large_v", "critical_eps_large_v",
    "predict", "gaussian_leaf_prob", "eps_of_time", "predict_time", "critical_time",
    "phase_diagram", "bp_reconstruction", "crossing",
]
