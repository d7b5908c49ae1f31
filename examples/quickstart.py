"""Quickstart: build a model, roll it out with masked resets, train one step on the
rollout in sequence mode, save and load a checkpoint. Prints what it does."""

import tempfile
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import eqx_lstm_ac as lac


def main() -> None:
    num_envs, obs_dim, act_dim, steps = 8, 6, 2, 32
    key_model, key_roll, key_obs = jax.random.split(jax.random.key(0), 3)
    model, state = eqx.nn.make_with_state(lac.LSTMActorCritic)(
        observation_space_size=obs_dim,
        action_space_size=act_dim,
        hidden_features=32,
        lstm_features=64,
        action_space=lac.BoxSpace(-1.0, 1.0),
        carry_shape=(num_envs,),
        key=key_model,
    )
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)))
    print(f"built LSTMActorCritic: obs {obs_dim} -> actions {act_dim}, {n_params} parameters")

    # A rollout: random observations; every 10 steps some environments start a new episode.
    c0 = model.carry(state)  # stored *before* the rollout, to start training from
    obs = jax.random.normal(key_obs, (steps, num_envs, obs_dim))
    starts = (jnp.arange(steps)[:, None] % 10 == 0) & (jnp.arange(num_envs)[None, :] % 2 == 0)
    starts = starts.at[0].set(False)
    actions, log_probs = [], []
    for t in range(steps):
        state = model.reset(state, obs[t].shape, mask=starts[t])
        (a, lp, _), state = model.act(obs[t], state, key=jax.random.fold_in(key_roll, t))
        actions.append(a)
        log_probs.append(lp)
    actions = jnp.stack(actions)
    log_probs = jnp.stack(log_probs)
    print(
        f"rollout: {steps} steps x {num_envs} envs, {int(starts.sum())} masked resets, "
        f"actions in [{float(actions.min()):.3f}, {float(actions.max()):.3f}]"
    )

    # The same steps in sequence mode, from the stored carry, reproduce the log-probs.
    new_lp, entropy, value = model.evaluate(obs, actions, carry=c0, episode_start=starts)
    print(
        f"sequence mode reproduces the rollout: max |log-prob diff| = "
        f"{float(jnp.max(jnp.abs(new_lp - log_probs))):.2e}, mean entropy "
        f"{float(entropy.mean()):.3f}"
    )

    # One optax step on a toy loss: maximise log-probs of the taken actions, fit values to 1.
    opt = optax.adam(1e-3)
    opt_state = opt.init(eqx.filter(model, eqx.is_array))

    def loss_fn(m: lac.LSTMActorCritic) -> jax.Array:
        lp, ent, v = m.evaluate(obs, actions, carry=c0, episode_start=starts)
        return -lp.mean() + jnp.mean((v - 1.0) ** 2) - 0.01 * ent.mean()

    @eqx.filter_jit
    def train_step(m, s):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(m)
        updates, s = opt.update(grads, s, eqx.filter(m, eqx.is_array))
        return eqx.apply_updates(m, updates), s, loss

    for i in range(3):
        model, opt_state, loss = train_step(model, opt_state)
        print(f"optax step {i}: loss {float(loss):.4f}")

    # Save, load, and run the loaded model with another number of environments.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.eqx"
        lac.save(path, model)
        loaded = lac.load(path)
        print(f"saved {path.stat().st_size} bytes; header: {lac.read_header(path)['metadata']}")
    state3 = loaded.init_state((3,))
    (a, _, v), _ = loaded.act(obs[0, :3], state3, key=key_roll, deterministic=True)
    (a_ref, _, v_ref), _ = model.act(
        obs[0, :3], model.init_state((3,)), key=key_roll, deterministic=True
    )
    print(
        f"loaded model on 3 envs matches: {bool(jnp.allclose(a, a_ref) and jnp.allclose(v, v_ref))}"
    )


if __name__ == "__main__":
    main()
