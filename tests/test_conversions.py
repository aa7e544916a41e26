"""Conversions at the call boundary are lossless (issue 19): numpy's can_cast(int64, float64,
"safe") is True though 2**53 + 1 becomes 2**53, so integers to a float input are checked value
by value — converted when the float holds every value exactly, a FlowCallError naming the
input, its declaration and the first value that would change otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import hypothesis.extra.numpy as hnp

import flowml
from flowml.errors import FlowCallError

SRC = """\
input x : f64[N]
input s : f32[N]
input k : i32[N]
input m : f64[2, 2]
param w : f64[2] = 0
fn f(x) -> x
fn g(s) -> s
fn h(k) -> k
fn q(m) -> m
"""
MODEL = flowml.loads(SRC, file="c.flow")
F64_DECL = "f(): input 'x' expects f64[N] (declared at c.flow:1:1)"
F32_DECL = "g(): input 's' expects f32[N] (declared at c.flow:2:1)"


def refusal(fn, value) -> str:
    with pytest.raises(FlowCallError) as e:
        fn(value)
    return e.value.message


def test_integers_that_floats_hold_exactly_are_converted():
    labels = np.random.RandomState(0).randint(0, 10, 50)  # the README's labels feed f64[N]
    out = MODEL.f(labels)
    assert out.dtype == np.float64 and np.array_equal(out, labels)
    for values in ([2**53, -2**53, 0], [2**53 + 2, 2**60, -2**63]):  # larger ones: exact when even enough
        np.testing.assert_array_equal(MODEL.f(np.array(values)), np.array(values, dtype=np.float64))
    for values in (np.array([2**24, -2**24, 7], np.int32), np.array([2**24, 3]), np.array([2**30], np.int64)):
        out = MODEL.g(values)
        assert out.dtype == np.float32 and [int(v) for v in out] == values.tolist()
    assert MODEL.f(np.zeros(0, np.int64)).shape == (0,)


def test_python_ints_convert_when_exact():
    assert MODEL.f([2**53, 1]).tolist() == [2**53, 1]
    assert MODEL.g([2**24, -3]).tolist() == [2**24, -3]
    assert MODEL.h([2**31 - 1, -2**31]).tolist() == [2**31 - 1, -2**31]


def test_an_inexact_integer_array_is_refused_with_its_first_bad_index():
    msg = refusal(MODEL.f, np.array([1, 2**53 + 1, 2**53 + 3]))
    assert msg.startswith(F64_DECL + ", got an array of dtype int64 and shape (3,): the value 9007199254740993 "
                          "at index [1] would become 9007199254740992 as float64")
    assert ".astype(np.float64)" in msg
    msg = refusal(MODEL.q, np.array([[0, 0], [-(2**53) - 1, 0]]))
    assert "input 'm' expects f64[2, 2]" in msg and "the value -9007199254740993 at index [1, 0]" in msg
    msg = refusal(MODEL.g, np.array([3, -(2**24) - 1], np.int32))
    assert msg.startswith(F32_DECL + ", got an array of dtype int32 and shape (2,): the value -16777217 at "
                          "index [1] would become -16777216 as float32")
    assert "the value 18446744073709551615 at index [0]" in refusal(MODEL.f, np.array([2**64 - 1], np.uint64))
    assert "the value 9223372036854775807" in refusal(MODEL.f, np.array([np.iinfo(np.int64).max]))


def test_inexact_python_ints_are_refused():
    msg = refusal(MODEL.f, 2**53 + 1)
    assert msg.startswith(F64_DECL + ", got an array of dtype int64 and shape (): the value 9007199254740993 "
                          "would become 9007199254740992 as float64")
    assert "at index [1]" in refusal(MODEL.g, [1, 2**24 + 1])
    assert "the value 2147483648 at index [1] would become -2147483648 as int32" in refusal(MODEL.h, [0, 2**31])


def test_params_are_checked_the_same_way():
    with pytest.raises(FlowCallError, match=r"param 'w' expects f64\[2\].*the value 9007199254740993 at index \[0\]"):
        MODEL.params["w"] = np.array([2**53 + 1, 0])
    MODEL.params["w"] = np.array([2**53, 0])
    assert MODEL.params["w"].tolist() == [2**53, 0]


def _exact(v: int, dtype) -> bool:
    return int(np.array(v).astype(dtype).item()) == v


@settings(max_examples=80, deadline=None)
@given(values=hnp.arrays(np.int64, st.integers(1, 5),
                         elements=st.one_of(st.integers(-2**63, 2**63 - 1),
                                            st.integers(-2**25, 2**25).map(lambda v: v << 30))),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_accepted_exactly_when_lossless(values, dtype):
    fn = MODEL.g if dtype is np.float32 else MODEL.f
    bad = [i for i, v in enumerate(values.tolist()) if not _exact(v, dtype)]
    if bad:
        assert f"at index [{bad[0]}] would become" in refusal(fn, values)
    else:
        assert [int(v) for v in fn(values)] == values.tolist()
