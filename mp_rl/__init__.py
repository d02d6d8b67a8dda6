"""mp_rl: a multiprocess actor-learner RL training system for one workstation.

The data path, each arrow one call you can grep for:

    env.step                      (actor: a Gymnasium vector env, batched policy inference)
      -> RingWriter.write          (actor: n-step rows, one block per atomic reservation)
      -> ReplayRing                (shared memory: stamped slots, live capacity window)
      -> RingSampler.sample        (learner: a batch of complete rows into pinned tensors)
      -> learner update            (Double DQN on the GPU)
      -> WeightBoard.publish       (learner: one copy into a seqlocked host slot)
      -> WeightBoard.read_into     (actor: one memcpy into its flat parameters)

The control block (`ControlBlock`) carries counters, the monitor's targets, membership slots and
the stop flag; `SharedRun` bundles the three segments and their `manifest.json`.
"""

__version__ = "0.1.0"
