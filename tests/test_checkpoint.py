import json
import os
import struct

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_lstm_ac as lac
from eqx_lstm_ac import _checkpoint

from .helpers import make_model


SPACES = [None, lac.FreeSpace(), lac.BoxSpace(-2.0, 1.0, width=0.5), lac.MaxNormSpace(3.0)]


def _outputs(model, xs, acts=None):
    (pi, v), carry = model.sequence(xs)
    if acts is None:
        return v, carry.h
    return model.evaluate(xs, acts)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("sigma_head", [False, True])
def test_round_trip_identical_outputs(tmp_path, getkey, space, sigma_head):
    model, _ = make_model(
        action_space=space, actor_sigma_head=sigma_head, activation="tanh", key=getkey()
    )
    path = tmp_path / "m.eqx"
    lac.save(path, model)
    loaded = lac.load(path)
    assert loaded.metadata == model.metadata
    assert loaded.action_space == model.action_space
    xs = jax.random.normal(getkey(), (4, 3, 5))
    acts = model.sequence(xs)[0][0].sample(seed=getkey())
    for a, b in zip(_outputs(model, xs, acts), _outputs(loaded, xs, acts), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree_util.tree_leaves(model), jax.tree_util.tree_leaves(loaded), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_discrete_round_trip(tmp_path, getkey):
    model, _ = make_model(discrete=True, remat=True, key=getkey())
    lac.save(tmp_path / "d.eqx", model)
    loaded = lac.load(tmp_path / "d.eqx")
    assert loaded.discrete and loaded.remat
    xs = jax.random.normal(getkey(), (4, 3, 5))
    np.testing.assert_array_equal(loaded.sequence(xs)[0][0].logits, model.sequence(xs)[0][0].logits)


@pytest.mark.parametrize("carry_shape", [(), (1,), (6,), (2, 3)])
def test_loaded_model_works_with_any_state(tmp_path, getkey, carry_shape):
    model, _ = make_model(carry_shape=(4,), key=getkey())  # trained with 4 envs
    lac.save(tmp_path / "m.eqx", model)
    loaded = lac.load(tmp_path / "m.eqx")
    # a state made by make_with_state for a fresh model of the same configuration
    _, state = make_model(carry_shape=carry_shape, key=getkey())
    x = jax.random.normal(getkey(), carry_shape + (5,))
    (pi, v), state = loaded(x, state)
    (pi_ref, v_ref), _ = model(x, model.init_state(carry_shape))
    np.testing.assert_array_equal(v, v_ref)
    assert loaded.carry(state).h.shape == carry_shape + (12,)
    # and one made by the loaded model itself
    (_, v2), _ = loaded(x, loaded.init_state(carry_shape))
    np.testing.assert_array_equal(v2, v_ref)


def test_checkpoint_holds_no_carry(tmp_path):
    small, _ = make_model(carry_shape=(1,))
    big, _ = make_model(carry_shape=(512,))
    lac.save(tmp_path / "a.eqx", small)
    lac.save(tmp_path / "b.eqx", big)
    assert (tmp_path / "a.eqx").read_bytes() == (tmp_path / "b.eqx").read_bytes()


def test_header_contents(tmp_path):
    model, _ = make_model(action_space=lac.BoxSpace(-1.0, 1.0))
    lac.save(tmp_path / "m.eqx", model)
    header = lac.read_header(tmp_path / "m.eqx")
    assert header["format_version"] == _checkpoint.FORMAT_VERSION
    assert header["library_version"] == lac.__version__
    assert header["metadata"] == model.metadata
    assert header["metadata"]["action_space"]["type"] == "BoxSpace"


def test_custom_bijector_must_be_passed_back(tmp_path):
    import distrax

    bij = distrax.Tanh()
    model, _ = make_model(action_space=bij)
    lac.save(tmp_path / "m.eqx", model)
    with pytest.raises(ValueError, match="user-defined action space"):
        lac.load(tmp_path / "m.eqx")
    loaded = lac.load(tmp_path / "m.eqx", action_space=distrax.Tanh())
    xs = jnp.ones((2, 2, 5))
    np.testing.assert_array_equal(loaded.sequence(xs)[1].h, model.sequence(xs)[1].h)


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.eqx"
    old, _ = make_model(key=jax.random.key(1))
    lac.save(path, old)
    before = path.read_bytes()
    new, _ = make_model(key=jax.random.key(2))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)  # fails after writing, before the rename
    with pytest.raises(OSError, match="disk full"):
        lac.save(path, new)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.eqx"]  # no temporary left
    monkeypatch.undo()
    lac.save(path, new)
    assert path.read_bytes() != before


def _saved(tmp_path):
    model, _ = make_model()
    path = tmp_path / "m.eqx"
    lac.save(path, model)
    return path, path.read_bytes()


def _split(data):
    n = struct.unpack("<Q", data[10:18])[0]
    return json.loads(data[18 : 18 + n]), data[18 + n :]


def _join(header, blob):
    head = json.dumps(header).encode()
    return _checkpoint.MAGIC + struct.pack("<Q", len(head)) + head + blob


@pytest.mark.parametrize("cut", [5, 14, 40, -100, -1])
def test_truncated_file(tmp_path, cut):
    path, data = _saved(tmp_path)
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="truncated|bad magic") as err:
        lac.load(path)
    assert str(path) in str(err.value)


def test_corrupted_header(tmp_path):
    path, data = _saved(tmp_path)
    n = struct.unpack("<Q", data[10:18])[0]
    path.write_bytes(data[:18] + b"{" + b"x" * (n - 1) + data[18 + n :])
    with pytest.raises(ValueError, match="corrupt checkpoint header") as err:
        lac.load(path)
    assert str(path) in str(err.value)


def test_corrupted_weights(tmp_path):
    path, data = _saved(tmp_path)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum"):
        lac.load(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.eqx"
    path.write_bytes(b"hello world, definitely not a model")
    with pytest.raises(ValueError, match="not an eqx_lstm_ac checkpoint"):
        lac.load(path)


def test_unknown_format_version(tmp_path):
    path, data = _saved(tmp_path)
    header, blob = _split(data)
    header["format_version"] = 99
    path.write_bytes(_join(header, blob))
    with pytest.raises(ValueError, match="unknown checkpoint format version 99") as err:
        lac.load(path)
    assert str(path) in str(err.value)


def test_weights_disagree_with_header(tmp_path):
    path, data = _saved(tmp_path)
    header, _ = _split(data)
    other, _ = make_model(lstm_features=7)  # same structure, other shapes
    lac.save(tmp_path / "other.eqx", other)
    _, other_blob = _split((tmp_path / "other.eqx").read_bytes())
    header["weights_nbytes"] = len(other_blob)
    header["weights_sha256"] = __import__("hashlib").sha256(other_blob).hexdigest()
    path.write_bytes(_join(header, other_blob))
    with pytest.raises(ValueError, match="disagree with its header") as err:
        lac.load(path)
    assert str(path) in str(err.value)


def test_unknown_activation_or_space_in_header(tmp_path):
    path, data = _saved(tmp_path)
    header, blob = _split(data)
    bad = json.loads(json.dumps(header))
    bad["metadata"]["activation"] = "os.system"
    path.write_bytes(_join(bad, blob))
    with pytest.raises(ValueError, match="unknown activation 'os.system'"):
        lac.load(path)
    bad = json.loads(json.dumps(header))
    bad["metadata"]["action_space"] = {"type": "builtins.eval", "args": {}}
    path.write_bytes(_join(bad, blob))
    with pytest.raises(ValueError, match="unknown action space 'builtins.eval'"):
        lac.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        lac.load(tmp_path / "nope.eqx")


def test_save_refuses_other_objects(tmp_path):
    with pytest.raises(TypeError, match="AbstractActorCritic"):
        lac.save(tmp_path / "m.eqx", eqx.nn.Linear(2, 2, key=jax.random.key(0)))


@pytest.mark.parametrize("width", [6000, 1_000_000, 10**15])
def test_header_sizes_are_checked_before_anything_is_built(tmp_path, width):
    """A header that claims a model far bigger than the file is refused from the header
    alone: nothing of the claimed size is allocated (10**15 floats would not fit)."""
    path, data = _saved(tmp_path)
    header, blob = _split(data)
    header["metadata"]["hidden_features"] = width  # the weights' checksum stays valid
    path.write_bytes(_join(header, blob))
    with pytest.raises(ValueError, match=r"describes holds \d+ bytes of arrays, the file"):
        lac.load(path)


def test_a_large_file_is_not_read_whole(tmp_path):
    """The magic bytes and the header's byte count are checked before the weights are
    read: a 1 GiB file (sparse here) costs a few bytes of reading, not 1 GiB."""
    import tracemalloc

    path, data = _saved(tmp_path)
    with open(path, "r+b") as f:
        f.truncate(1 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="padded"):
            lac.load(path)
        (tmp_path / "junk.eqx").write_bytes(b"")
        with open(tmp_path / "junk.eqx", "r+b") as f:
            f.truncate(1 << 30)
        with pytest.raises(ValueError, match="bad magic"):
            lac.load(tmp_path / "junk.eqx")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_features", "64"),
        ("hidden_features", True),
        ("hidden_features", [64]),
        ("discrete", "yes"),
        ("activation", {"name": "gelu"}),
        ("action_space", {"type": "BoxSpace", "args": {"x_min": 1.0}}),
        ("action_space", {"type": "BoxSpace", "args": {"x_min": 1.0, "x_max": 0.0}}),
        ("action_space", [1, 2]),
        ("surprise", 1),
    ],
)
def test_bad_header_fields_give_the_documented_error(tmp_path, field, value):
    path, data = _saved(tmp_path)
    header, blob = _split(data)
    header["metadata"][field] = value
    path.write_bytes(_join(header, blob))
    with pytest.raises(ValueError, match="describes no valid model") as err:
        lac.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("model", [["LSTMActorCritic"], "os.system", None])
def test_bad_model_names_give_the_documented_error(tmp_path, model):
    path, data = _saved(tmp_path)
    header, blob = _split(data)
    header["model"] = model
    path.write_bytes(_join(header, blob))
    with pytest.raises(ValueError, match="Unknown model|unknown model"):
        lac.load(path)


def test_deeply_nested_header_is_a_value_error(tmp_path):
    path, data = _saved(tmp_path)
    _, blob = _split(data)
    head = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(_checkpoint.MAGIC + struct.pack("<Q", len(head)) + head + blob)
    with pytest.raises(ValueError, match="corrupt checkpoint header"):
        lac.load(path)


def test_load_of_a_directory_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        lac.load(tmp_path)


def test_custom_action_space_must_be_the_one_saved(tmp_path):
    import distrax

    model, _ = make_model(action_space=distrax.Tanh())
    lac.save(tmp_path / "m.eqx", model)
    with pytest.raises(ValueError, match="'Tanh'.*got 'Sigmoid'"):
        lac.load(tmp_path / "m.eqx", action_space=distrax.Sigmoid())
    boxed, _ = make_model(action_space=lac.BoxSpace(-1.0, 1.0))
    lac.save(tmp_path / "b.eqx", boxed)
    with pytest.raises(ValueError, match="saved with the action space BoxSpace"):
        lac.load(tmp_path / "b.eqx", action_space=lac.BoxSpace(-2.0, 2.0))
    assert lac.load(tmp_path / "b.eqx", action_space=lac.BoxSpace(-1.0, 1.0)).action_space == (
        lac.BoxSpace(-1.0, 1.0)
    )


def test_custom_action_space_with_other_parameters_is_refused(tmp_path):
    import distrax

    class Shift(distrax.Bijector):
        def __init__(self, by: float):
            super().__init__(event_ndims_in=0)
            self.by = by

        def forward_and_log_det(self, x):
            return x + self.by, jnp.zeros_like(x)

        def inverse_and_log_det(self, y):
            return y - self.by, jnp.zeros_like(y)

    model, _ = make_model(action_space=Shift(0.5))
    lac.save(tmp_path / "m.eqx", model)
    probe = lac.read_header(tmp_path / "m.eqx")["metadata"]["action_space"]["probe"]
    assert len(probe) == model.action_dim
    with pytest.raises(ValueError, match="maps actions differently"):
        lac.load(tmp_path / "m.eqx", action_space=Shift(0.0))
    same = lac.load(tmp_path / "m.eqx", action_space=Shift(0.5))
    assert same.metadata == model.metadata
