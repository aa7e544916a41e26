"""Random streams: Philox-4x32-10 (flowml/ir/philox.py), the `random` op and its library
functions (uniform, normal, bernoulli, randint), the model's stream key `__rng__` = [seed, calls]
(flowml/program.py), and random numbers inside loops (flowml/ir/scan.py).

- the generator against the Random123 known-answer vectors;
- the distributions: moments and a Kolmogorov-Smirnov test on 10^6 draws (uniform f32/f64,
  normal), a chi-square test for bernoulli and randint (the seeds are fixed, so the tests are
  deterministic; the thresholds are loose enough for any reasonable seed);
- streams never repeat: across calls, across random ops in one fn, across inlined copies of a
  def, across the steps of a loop (and of a loop nested in a loop);
- the seed: `seed N`, `flowml.loads(..., seed=)`, `flowml run --seed`, and the stream position
  saved with the params;
- the same model and seed give bit-identical numbers on the reference, LLVM and OpenCL backends.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import flowml
from flowml.ir import philox
from helpers import BACKENDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




# ----------------------------------------------------------------- the generator


# Random123's kat_vectors for philox4x32-10: (counter, key, words); tests/test_llvm_philox.py
# runs them through the native kernel too.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     "d16cfe09 94fdcceb 5001e420 24126ea1"),
]
KNOWN_ANSWER_IDS = ["zeros", "ones", "pi"]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS, ids=KNOWN_ANSWER_IDS)
def test_philox_known_answers(counter, key, expected):
    """Random123's kat_vectors for philox4x32-10."""
    words = philox.philox4x32(counter, key)
    assert " ".join(f"{int(w):08x}" for w in words) == expected


def test_philox_is_vectorized_over_counters():
    """An array of counters gives each one's words, as one at a time would."""
    c0 = np.array([0, 0xFFFFFFFF, 0x243F6A88], dtype=np.uint32)
    w = philox.philox4x32((c0, 0, 0, 0), (0, 0))
    for i in range(3):
        assert [int(a[i]) for a in w] == [int(a) for a in philox.philox4x32((int(c0[i]), 0, 0, 0), (0, 0))]


def test_float_conversions_stay_in_the_unit_interval():
    top = np.array([0xFFFFFFFF], dtype=np.uint32)
    zero = np.array([0], dtype=np.uint32)
    assert philox.uniform(top, top, np.float32)[0] < 1 and philox.uniform(top, top, np.float64)[0] < 1
    assert philox.uniform(zero, zero, np.float64)[0] == 0
    assert philox.uniform(top, top, np.float32).dtype == np.float32
    assert np.isfinite(philox.normal(top, top, np.float64)).all()  # u1 in (0, 1]: no log(0)
    assert np.isfinite(philox.normal(zero, zero, np.float64)).all()


def _ulps(got: np.ndarray, exact) -> np.ndarray:
    """|got - exact| in units of the last place of `exact` rounded to float64."""
    exact = np.asarray(exact, dtype=np.longdouble)
    return np.abs((got.astype(np.longdouble) - exact) / np.spacing(np.abs(exact.astype(np.float64))))


def test_box_muller_log_is_within_one_ulp():
    """philox.log_unit (the reference's own log: numpy's np.log is a CPU-dependent SIMD kernel
    no other backend reproduces) on u1 = (w + 1) 2^-32: random words, every small w (where
    2^k (1 + f) has its largest k), and around every power of two, against long double logl."""
    w = np.random.default_rng(0).integers(0, 1 << 32, 1 << 20, dtype=np.uint64)
    near = [(1 << k) + d - 1 for k in range(33) for d in range(-3, 4) if 0 <= (1 << k) + d - 1 < 1 << 32]
    w = np.concatenate([w, np.arange(1 << 16, dtype=np.uint64), np.array(near, dtype=np.uint64)])
    u1 = (w.astype(np.float64) + 1.0) * 2.0 ** -32
    got = philox.log_unit(u1)
    assert _ulps(got, np.log(u1.astype(np.longdouble))).max() < 1.0
    assert got[u1 == 1.0].tolist() == [0.0]
    assert _ulps(got, np.log(u1)).max() <= 1.0  # numpy's own log: at most its last bit apart


def test_box_muller_cos_is_within_two_ulp():
    """philox.cos_turn(w) = cos(2 pi w / 2^32) against mpmath at 160 bits: random words and
    the octant boundaries of its exact integer argument reduction; exact zeros at the quarter
    turns (where np.cos(2 pi u2) is off by its argument's rounding, ~1e-16 absolute)."""
    import mpmath
    mpmath.mp.prec = 160
    w = list(np.random.default_rng(1).integers(0, 1 << 32, 20000))
    w += [(q * (1 << 29) + d) % (1 << 32) for q in range(8) for d in (-2, -1, 0, 1, 2)]
    got = philox.cos_turn(np.array(w, dtype=np.uint32))
    for x, g in zip(w, got):
        if x % (1 << 30) == 0 and x % (1 << 31):
            assert g == 0, x
            continue
        exact = mpmath.cos(2 * mpmath.pi * int(x) / 2 ** 32)
        assert float(abs(mpmath.mpf(float(g)) - exact)) < 2.0 * np.spacing(abs(float(exact))), x


# ----------------------------------------------------------------- distributions

DRAWS = """
seed 20240601
u64 = uniform(shape=(1000, 1000))
u32 = uniform(shape=(1000, 1000), dtype=f32)
ab  = uniform(-2, 3, shape=(1000, 1000))
z64 = normal(shape=(1000, 1000))
z32 = normal(shape=(1000, 1000), dtype=f32)
ms  = normal(0.5, 3, shape=(1000, 1000))
b   = bernoulli(0.3, shape=(1000, 1000))
r   = randint(-3, 7, shape=(1000, 1000))
fn draw() -> u64, u32, ab, z64, z32, ms, b, r
"""


@pytest.fixture(scope="module")
def draws():
    u64, u32, ab, z64, z32, ms, b, r = flowml.loads(DRAWS, backend="reference").draw()
    return dict(u64=u64, u32=u32, ab=ab, z64=z64, z32=z32, ms=ms, b=b, r=r)


def _moments_close(x, mean, var, k=6.0):
    """Sample mean and variance within k standard errors of the true ones."""
    n = x.size
    x = x.astype(np.float64).ravel()
    assert abs(x.mean() - mean) < k * np.sqrt(var / n), (x.mean(), mean)
    # the variance of the sample variance ~ (mu4 - var^2) / n; bound mu4 by 3 var^2 (normal) or less
    assert abs(x.var() - var) < k * np.sqrt(2 * var ** 2 / n), (x.var(), var)


def test_uniform_f64(draws):
    u = draws["u64"]
    assert u.dtype == np.float64 and u.shape == (1000, 1000)
    assert u.min() >= 0 and u.max() < 1
    _moments_close(u, 0.5, 1 / 12)
    assert stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    assert len(np.unique(u)) > 0.999 * u.size  # 53 bits: (almost) no repeats


def test_uniform_f32(draws):
    u = draws["u32"]
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1
    _moments_close(u, 0.5, 1 / 12)
    assert stats.kstest(u.ravel().astype(np.float64), "uniform").pvalue > 1e-3


def test_uniform_low_high(draws):
    u = draws["ab"]
    assert u.min() >= -2 and u.max() < 3
    _moments_close(u, 0.5, 25 / 12)
    assert stats.kstest(u.ravel(), "uniform", args=(-2, 5)).pvalue > 1e-3


@pytest.mark.parametrize("name", ["z64", "z32"])
def test_normal(draws, name):
    z = draws[name]
    assert z.dtype == (np.float64 if name == "z64" else np.float32)
    _moments_close(z, 0.0, 1.0)
    x = z.ravel().astype(np.float64)
    assert abs(stats.skew(x)) < 0.02 and abs(stats.kurtosis(x)) < 0.04
    assert stats.kstest(x, "norm").pvalue > 1e-3


def test_normal_mean_std(draws):
    z = draws["ms"]
    _moments_close(z, 0.5, 9.0)
    assert stats.kstest(z.ravel(), "norm", args=(0.5, 3)).pvalue > 1e-3


def test_the_draws_of_different_ops_are_independent(draws):
    """Each random op has its own stream: the standard normals of one op are uncorrelated with
    the uniforms of another (and with the other normal op)."""
    for a, b in [("u64", "z64"), ("z64", "z32"), ("u64", "u32")]:
        r = np.corrcoef(draws[a].ravel().astype(np.float64), draws[b].ravel().astype(np.float64))[0, 1]
        assert abs(r) < 6e-3, (a, b, r)


def test_bernoulli_chi_square(draws):
    b = draws["b"]
    assert b.dtype == np.float64 and set(np.unique(b)) == {0.0, 1.0}
    ones = int(b.sum())
    n = b.size
    assert stats.chisquare([n - ones, ones], [0.7 * n, 0.3 * n]).pvalue > 1e-3


def test_randint_chi_square(draws):
    r = draws["r"]
    assert r.dtype == np.int64 and r.min() == -3 and r.max() == 6
    counts = np.bincount((r + 3).ravel(), minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_bernoulli_dtype_and_shape_follow_p():
    """bernoulli(p) has p's shape and float dtype by default; p may be an array of probabilities."""
    m = flowml.loads("""
input p : f32[N]
fn f(p) -> bernoulli(p), bernoulli(p, shape=(1000, N)), bernoulli(0.5, shape=(2,), dtype=i64)
""")
    p = np.array([0.0, 0.25, 1.0], dtype=np.float32)
    one, many, ints = m.f(p)
    assert one.dtype == np.float32 and one.shape == (3,)
    assert many.shape == (1000, 3) and ints.dtype == np.int64
    assert np.all(many[:, 0] == 0) and np.all(many[:, 2] == 1)
    assert abs(many[:, 1].mean() - 0.25) < 6 * np.sqrt(0.25 * 0.75 / 1000)


# ----------------------------------------------------------------- streams never repeat

STREAMS = """
input x : f64[N, 2]
a = uniform(shape=(N, 4))
b = uniform(shape=(N, 4))
def noise(v) = v + normal(shape=(3,))
n1 = noise(zeros((3,)))
n2 = noise(zeros((3,)))
fn draw(x) -> a, b, n1, n2
param w : f64[2] = zeros
fn get() -> w
"""


def test_two_calls_differ_and_the_counter_advances_once_per_call():
    m = flowml.loads(STREAMS)
    assert list(m.params["__rng__"]) == [0, 0]
    first = m.draw(np.zeros((3, 2)))
    assert list(m.params["__rng__"]) == [0, 1]
    second = m.draw(np.zeros((3, 2)))
    assert list(m.params["__rng__"]) == [0, 2]
    for f, s in zip(first, second):
        assert not np.any(f == s)


def test_a_fn_that_draws_nothing_leaves_the_stream_alone():
    m = flowml.loads(STREAMS)
    m.get()
    m.get()
    assert list(m.params["__rng__"]) == [0, 0]
    assert "__rng__" not in [u.param for u in m.program.functions["get"].updates]


def test_two_random_ops_in_one_fn_differ():
    a, b, _, _ = flowml.loads(STREAMS).draw(np.zeros((3, 2)))
    assert not np.any(a == b)


def test_a_def_inlined_twice_draws_two_streams():
    _, _, n1, n2 = flowml.loads(STREAMS).draw(np.zeros((3, 2)))
    assert not np.any(n1 == n2)


def test_shapes_from_symbolic_dims():
    """normal(shape=(N, 4)) with N bound by an input; a counter-based stream: the element at
    index i is the same whatever the size (for the same call), so a smaller draw is a prefix."""
    src = "input x : f64[N, 2]\nfn draw(x) -> normal(shape=(N, 4)), uniform(shape=(2, N))\n"
    m3, m5 = flowml.loads(src), flowml.loads(src)
    z3, u3 = m3.draw(np.zeros((3, 2)))
    z5, u5 = m5.draw(np.zeros((5, 2)))
    assert z3.shape == (3, 4) and z5.shape == (5, 4) and u3.shape == (2, 3) and u5.shape == (2, 5)
    assert np.array_equal(z5.ravel()[:12], z3.ravel())
    assert np.array_equal(u5.ravel()[:6], u3.ravel())
    empty, _ = m3.draw(np.zeros((0, 2)))
    assert empty.shape == (0, 4)


def test_the_python_api_draws_in_the_default_graph():
    flowml.reset_default_graph()
    try:
        x = flowml.tensor("x", "f64[N]")
        f = flowml.function([x], [flowml.uniform(shape=(3,)), flowml.normal(2, 0.1, shape=x.shape),
                                  flowml.bernoulli(0.5, shape=(4,)), flowml.randint(0, 3, shape=(5,))])
        a = f(np.zeros(4))
        b = f(np.zeros(4))
        assert a[1].shape == (4,) and a[3].dtype == np.int64
        assert not np.any(a[0] == b[0]) and not np.any(a[1] == b[1])
    finally:
        flowml.reset_default_graph()


# ----------------------------------------------------------------- the seed

SEEDED = "seed 5\nfn draw() -> uniform(shape=(6,)), sum(normal(shape=(5,)))\n"


def test_seed_in_the_model():
    a = flowml.loads(SEEDED).draw()
    b = flowml.loads(SEEDED).draw()
    c = flowml.loads(SEEDED.replace("seed 5", "seed 6")).draw()
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.any(a[0] == c[0])
    assert list(flowml.loads(SEEDED).params["__rng__"]) == [5, 0]


def test_seed_argument_overrides_the_model():
    a = flowml.loads(SEEDED, seed=9).draw()
    b = flowml.loads(SEEDED.replace("seed 5", "seed 9")).draw()
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], flowml.loads(SEEDED).draw()[0])


def test_cli_run_seed(tmp_path):
    path = tmp_path / "m.flow"
    path.write_text("fn draw() -> total {\n    total = sum(uniform(shape=(5,)))\n}\n")
    params = tmp_path / "p.npz"
    proc = subprocess.run([sys.executable, "-m", "flowml.cli", "run", str(path), "draw", "--seed", "9",
                           "--backend", "reference", "--save-params", str(params)],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, COLUMNS="100"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    want = flowml.load(str(path), seed=9).draw()
    assert f"{float(want):.8g}" in proc.stdout
    assert f"{float(flowml.load(str(path), seed=0).draw()):.8g}" not in proc.stdout
    assert list(np.load(params)["__rng__"]) == [9, 1]


def test_the_stream_position_is_saved_with_the_params(tmp_path):
    m = flowml.loads(SEEDED)
    m.draw()
    path = str(tmp_path / "p.npz")
    m.save_params(path)
    after = [m.draw() for _ in range(2)]
    m.load_params(path)
    again = m.draw()
    assert np.array_equal(again[0], after[0][0]) and again[1] == after[0][1]
    other = flowml.loads(SEEDED, seed=123)  # a different seed: the loaded key replaces it
    other.load_params(path)
    assert np.array_equal(other.draw()[0], after[0][0])


# ----------------------------------------------------------------- inside loops

LOOPS = """
input xs : f64[T, 2]
param h0 : f64[3] = zeros
def step(h, x) = (h + 1, normal(shape=(3,)))
count, noise = scan(step, h0, xs)
def walk(s, s2) {
    d = normal(shape=(50,))
    return s + d, s2 + d * d
}
s, s2 = iterate(walk, (zeros((50,)), zeros((50,))), 200)
def inner(c, x) = (c, uniform(shape=(2,)))
def outer_step(c, x) {
    cs, us = scan(inner, 0.0, xs)
    return c + 1, us
}
n, nested = scan(outer_step, 0.0, xs)
fn draw(xs) -> noise, s, s2, nested
"""


def test_a_random_call_in_a_scan_body_draws_new_numbers_each_step():
    noise, _, _, _ = flowml.loads(LOOPS).draw(np.zeros((6, 2)))
    assert noise.shape == (6, 3)
    assert len({tuple(r) for r in noise}) == 6 and len(np.unique(noise)) == noise.size


def test_a_random_call_in_an_iterate_body_draws_new_numbers_each_step():
    """s = the sum of 200 draws, s2 = the sum of their squares: s**2 == 200 * s2 if every step
    drew the same numbers; independent standard normals give s2 / 200 ~ 1 and s / 200 ~ 0."""
    _, s, s2, _ = flowml.loads(LOOPS).draw(np.zeros((6, 2)))
    assert np.all(s ** 2 < 0.5 * 200 * s2)
    assert abs(np.mean(s2) / 200 - 1) < 6 * np.sqrt(2 / 10000)
    assert abs(np.mean(s) / 200) < 6 * np.sqrt(1 / 10000)


def test_a_random_call_in_a_nested_loop_draws_new_numbers_at_every_inner_and_outer_step():
    _, _, _, nested = flowml.loads(LOOPS).draw(np.zeros((4, 2)))
    assert nested.shape == (4, 4, 2)
    assert len(np.unique(nested)) == nested.size


def test_loop_draws_differ_between_calls_and_repeat_with_the_key():
    m = flowml.loads(LOOPS)
    key = m.params["__rng__"]
    a = m.draw(np.zeros((3, 2)))
    b = m.draw(np.zeros((3, 2)))
    m.params["__rng__"] = key
    c = m.draw(np.zeros((3, 2)))
    assert not np.any(a[0] == b[0]) and not np.any(a[3] == b[3])
    for x, y in zip(a, c):
        assert np.array_equal(x, y)


def test_a_value_drawn_outside_the_body_is_the_same_at_every_step():
    """A random value defined outside the def is loop-invariant: drawn once per call."""
    m = flowml.loads("""
input xs : f64[T]
r = normal(shape=(2,))
def step(h, x) = (h, r + 0 * x)
h, rs = scan(step, zeros((2,)), xs)
fn f(xs) -> rs, r
""")
    rs, r = m.f(np.zeros(5))
    assert np.array_equal(rs, np.tile(r, (5, 1)))


GRAD_NOISE = """
input xs : f64[T, 3]
param Wx : f64[3, 4] = normal(0, 0.5)
param Wh : f64[4, 4] = normal(0, 0.5)
param h0 : f64[4] = zeros
def step(h, x) = tanh(x @ Wx + h @ Wh + 0.3 * normal(shape=(4,)))
hs = scan(step, h0, xs)
cost = sum(hs ** 2)
gx, gh = grad(cost, Wx, Wh)
jv = rop(cost, Wh, ones((4, 4)))
hv = hessian_vector(cost, Wh, ones((4, 4)))
fn f(xs) -> cost, gx, gh, jv, hv
"""


def test_grad_through_a_loop_that_draws_sees_the_same_numbers_as_the_forward_pass():
    """BPTT recomputes the body's random numbers in the reverse loop (and forward mode in its
    own loop, and hessian_vector in a loop over the reverse loop): with the key held fixed,
    finite differences agree with all three."""
    m = flowml.loads(GRAD_NOISE)
    xs = np.random.RandomState(0).randn(5, 3)
    key = m.params["__rng__"]
    cost, gx, gh, jv, hv = m.f(xs)
    eps = 1e-6

    def cost_at(name, value, output=0):
        old = m.params[name]
        m.params[name], m.params["__rng__"] = value, key
        c = m.f(xs)[output]
        m.params[name] = old
        return c

    for name, g in (("Wx", gx), ("Wh", gh)):
        w = m.params[name]
        num = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            d = np.zeros_like(w)
            d[idx] = eps
            num[idx] = (cost_at(name, w + d) - cost_at(name, w - d)) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-7)
    wh = m.params["Wh"]
    num_jv = (cost_at("Wh", wh + eps) - cost_at("Wh", wh - eps)) / (2 * eps)
    assert jv == pytest.approx(num_jv, rel=1e-6, abs=1e-7)
    # second order (forward mode over the reverse loop): H v vs differences of the gradient
    num_hv = (cost_at("Wh", wh + 1e-5, 2) - cost_at("Wh", wh - 1e-5, 2)) / 2e-5
    np.testing.assert_allclose(hv, num_hv, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------- backends

CROSS = """
seed 77
input x : f64[N, 2]
u = uniform(shape=(N, 300))
u32 = uniform(shape=(N, 300), dtype=f32)
z = normal(shape=(300, N))
z32 = normal(shape=(N, 300), dtype=f32)
b = bernoulli(0.4, shape=(N, 300))
r = randint(0, 1000, shape=(N, 300))
def step(h, x) = (h + x, uniform(-1, 1, shape=(2,)) * x)
h, ys = scan(step, zeros((2,)), x)
fn draw(x) -> u, u32, z, z32, b, r, ys
fn affine() -> uniform(-2, 3, shape=(100,)), normal(0.5, 3, shape=(100,))
"""


@pytest.fixture(scope="module")
def reference_draws():
    m = flowml.loads(CROSS, backend="reference")
    x = np.arange(14.0).reshape(7, 2)
    return [m.draw(x), m.draw(x)], [m.affine(), m.affine()]


@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_the_same_seed_gives_bit_identical_numbers_on_every_backend(backend, reference_draws):
    want, want_affine = reference_draws
    m = flowml.loads(CROSS, backend=backend)
    x = np.arange(14.0).reshape(7, 2)
    got = [m.draw(x), m.draw(x)]
    for call in range(2):
        for name, g, w in zip("u u32 z z32 b r ys".split(), got[call], want[call]):
            assert g.dtype == w.dtype and g.shape == w.shape, name
            assert np.array_equal(g, w), f"{backend}: {name} of call {call} differs from the reference"
    assert list(m.params["__rng__"]) == [77, 2]
    got_affine = [m.affine(), m.affine()]
    for g, w in zip(got_affine, want_affine):
        for a, b in zip(g, w):  # low + (high - low) * u: at most an FMA's rounding apart
            np.testing.assert_allclose(a, b, rtol=4e-16 * 8, atol=1e-15)


def test_affine_draws_are_bit_identical_on_llvm(reference_draws):
    _, want_affine = reference_draws
    m = flowml.loads(CROSS, backend="llvm")
    x = np.arange(14.0).reshape(7, 2)
    m.draw(x), m.draw(x)  # the same calls as the reference's, so the stream is at the same place
    got = m.affine()
    assert all(np.array_equal(a, b) for a, b in zip(got, want_affine[0]))
