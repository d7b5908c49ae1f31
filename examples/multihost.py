"""One data-parallel update on several processes (hosts), with `jax.distributed`.

Every process runs this same program. Each one builds only its own environments' data
(`eqx_lstm_ac.process_slice`), assembles the global batch from the local parts
(`eqx_lstm_ac.shard_local_batch`), and runs the same replicated update; gradients are
averaged over all devices of all processes. It prints the loss and a checksum of the
updated parameters, which do not depend on how many processes or devices share the work.

On each of N hosts (the coordinator is process 0's address, any free port):

    python examples/multihost.py --coordinator HOST0:1234 --num-processes N --process-id I

On one machine, simulated with 2 processes of 2 CPU devices each, checked against one
process with all 4 devices:

    python examples/multihost.py --simulate 2
"""

import argparse
import os
import subprocess
import sys

import numpy as np


NUM_ENVS, T, OBS, ACT, LSTM = 16, 8, 6, 2, 32


def global_batch_part(rows: slice) -> dict[str, np.ndarray]:
    """The rows `rows` of the global batch. Each environment's data depends only on its
    global index, as a seeded environment's would."""
    parts = []
    for env in range(rows.start, rows.stop):
        rng = np.random.default_rng(env)
        parts.append(
            {
                "xs": rng.standard_normal((T, OBS)).astype(np.float32),
                "actions": rng.uniform(-0.9, 0.9, (T, ACT)).astype(np.float32),
                "starts": rng.uniform(size=(T,)) < 0.1,
                "adv": rng.standard_normal((T,)).astype(np.float32),
                "returns": rng.standard_normal((T,)).astype(np.float32),
            }
        )
    # Time-major (T, B_local, ...), as a rollout stores it.
    return {k: np.stack([p[k] for p in parts], axis=1) for k in parts[0]}


def worker(args: argparse.Namespace) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import eqx_lstm_ac as lac

    if args.num_processes > 1:
        # CPU devices of different processes talk through gloo; GPUs and TPUs need no flag.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    mesh = lac.data_mesh()  # all devices of all processes
    rows = lac.process_slice(NUM_ENVS, mesh)  # this process's environments
    batch = lac.shard_local_batch(global_batch_part(rows), mesh, axis=1)

    # The same key on every process: the same initial parameters everywhere.
    model = lac.LSTMActorCritic(
        OBS, ACT, lstm_features=LSTM, action_space=lac.BoxSpace(-1.0, 1.0), key=jax.random.key(0)
    )
    opt = optax.adam(1e-2)
    model, opt_state = lac.replicate((model, opt.init(eqx.filter(model, eqx.is_array))), mesh)

    def loss_fn(m, b):
        lp, ent, v = m.evaluate(b["xs"], b["actions"], episode_start=b["starts"])
        mean = lambda x: jax.lax.pmean(jnp.mean(x), lac.DATA_AXIS)  # noqa: E731
        return -mean(lp * b["adv"]) + 0.5 * mean(jnp.square(v - b["returns"])) - 0.01 * mean(ent)

    grad_fn = lac.data_parallel_grad(loss_fn, mesh, batch_axis=1)

    @eqx.filter_jit
    def update(model, opt_state, batch):
        loss, grads = grad_fn(model, batch)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    model, opt_state, loss = update(model, opt_state, batch)
    # Parameters are replicated: every process holds a full copy, read it locally.
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    checksum = sum(float(np.sum(np.asarray(x.addressable_data(0), np.float64))) for x in leaves)
    print(
        f"process {jax.process_index()}/{jax.process_count()}: devices {jax.device_count()} "
        f"({jax.local_device_count()} local), envs {rows.start}:{rows.stop} of {NUM_ENVS}, "
        f"loss {float(loss.addressable_data(0)):.6f}, params checksum {checksum:.6f}",
        flush=True,
    )


def simulate(num_processes: int, devices_per_process: int = 2) -> None:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
    coordinator = "localhost:12765"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--coordinator", coordinator]
            + ["--num-processes", str(num_processes), "--process-id", str(i)],
            env=env,
        )
        for i in range(num_processes)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    print("reference, one process with all the devices:", flush=True)
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={num_processes * devices_per_process}"
    )
    codes.append(subprocess.run([sys.executable, __file__], env=env, timeout=600).returncode)
    if any(codes):
        sys.exit(f"a process failed: exit codes {codes}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--coordinator", default=None, help="process 0's HOST:PORT")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument(
        "--simulate", type=int, default=0, help="run N local processes of 2 CPU devices"
    )
    args = parser.parse_args()
    if args.simulate:
        simulate(args.simulate)
    else:
        worker(args)
