"""The control block: run-wide counters, the monitor's targets, membership slots and the stop flag.

Each member (actor, learner, monitor, an actor attached by hand) claims a slot with one CAS on
its state word, so two processes racing for slots never get the same one. A member row is one
64-byte cache line written only by its owner (heartbeat, steps), read by the supervisor and tools.
"""

from __future__ import annotations

import enum
import json
import os
import time

import numpy as np

from mp_rl.shm import atomics
from mp_rl.shm.segment import Layout, Segment
from mp_rl.shm.sync import Wakeup

MAGIC = 0x6D70726C_00000002  # "mprl", layout version 2 (adds the monitor snapshot)


class State(enum.IntEnum):
    FREE = 0
    CLAIMED = 1  # slot taken, member starting
    RUNNING = 2
    RETIRING = 3  # asked to leave: finish the current block, release the slot, exit 0


class Kind(enum.IntEnum):
    ACTOR = 1
    LEARNER = 2
    MONITOR = 3


ATTACHED = 1  # member flag: started by hand (mp_rl.attach); the monitor never retires it

# Column meaning of a member row (eight int64 words = one cache line).
M_STATE, M_KIND, M_PID, M_HEARTBEAT, M_STEPS, M_WEIGHTS, M_FLAGS, M_INDEX = range(8)
COUNTERS = ("env_steps", "episodes", "updates", "learner_wait_ns", "actor_blocked_ns")
EPISODE_LOG = 1024  # recent episodes kept for the status line: (return, length, slot, stamp)
TARGETS = ("actors", "batch_size", "capacity")
SNAPSHOT_BYTES = 64 * 1024  # the monitor's latest snapshot, as JSON, under a seqlock


class ControlBlock:
    """Shared run state.

    >>> cb = ControlBlock.create("mp_rl.doctest.control", max_members=4)
    >>> slot = cb.claim(Kind.ACTOR)
    >>> cb.add("env_steps", 128)
    128
    >>> cb.report_episode(slot, ret=21.0, length=21); cb.episodes_since(0)[0].tolist()
    [[21.0, 21.0, 0.0]]
    >>> cb.leave(slot); cb.destroy()
    """

    def __init__(self, segment: Segment, max_members: int):
        self.segment, self.max_members = segment, max_members
        v = self.layout_for(max_members).views(segment.buf)
        self._run, self._counters, self._targets = v["run"], v["counters"], v["targets"]
        self.members = v["members"]
        self._ep_log, self._ep_cursor = v["ep_log"], v["ep_cursor"]
        self._ep_cursor_addr = atomics.address_of(v["ep_cursor"])
        self._snap_seq, self._snapshot = v["snap_seq"], v["snapshot"]
        self._snap_addr = atomics.address_of(v["snap_seq"])
        self._counter_addr = atomics.address_of(v["counters"])
        self._member_addr = atomics.address_of(self.members.reshape(-1))
        self.stop_addr = atomics.address_of(v["run"], 2)
        self.wakeup = Wakeup(atomics.address_of(v["wake"]))

    @staticmethod
    def layout_for(max_members: int) -> Layout:
        return Layout.build(
            [("run", "<i8", (8,)), ("counters", "<i8", (8,)), ("targets", "<i8", (8,)),
             ("wake", "<i4", (16,)), ("members", "<i8", (max_members, 8)),
             ("ep_cursor", "<i8", (8,)), ("ep_log", "<f8", (EPISODE_LOG, 4)),
             ("snap_seq", "<i8", (8,)), ("snapshot", "u1", (SNAPSHOT_BYTES,))]
        )  # fmt: skip

    @classmethod
    def create(cls, name: str, max_members: int) -> ControlBlock:
        cb = cls(Segment.create(name, cls.layout_for(max_members).size), max_members)
        cb._run[1] = os.getpid()
        cb._run[3] = time.time_ns()
        cb._run[0] = MAGIC
        return cb

    @classmethod
    def attach(cls, name: str, max_members: int) -> ControlBlock:
        cb = cls(Segment.attach(name), max_members)
        if int(cb._run[0]) != MAGIC:
            cb.close()
            raise RuntimeError(f"segment {name} is not an mp_rl control block of this version")
        return cb

    def describe(self) -> dict:
        return {"segment": self.segment.name, "max_members": self.max_members}

    @classmethod
    def from_manifest(cls, entry: dict) -> ControlBlock:
        return cls.attach(entry["segment"], int(entry["max_members"]))

    @property
    def owner_pid(self) -> int:
        return int(self._run[1])

    # --- stop -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        atomics.store(self.stop_addr, 1)
        self.wakeup.notify()

    @property
    def stopping(self) -> bool:
        return bool(self._run[2])

    def wait_stop(self, timeout: float) -> bool:
        """Sleep until stop is requested (True) or `timeout` passes (False)."""
        return self.wakeup.wait_for(lambda: self.stopping, timeout)

    # --- counters and targets ---------------------------------------------------------------
    def add(self, counter: str, n: int) -> int:
        return atomics.fetch_add(self._counter_addr + 8 * COUNTERS.index(counter), n) + n

    def counters(self) -> dict[str, int]:
        return {name: int(self._counters[i]) for i, name in enumerate(COUNTERS)}

    def set_target(self, name: str, value: int) -> None:
        self._targets[TARGETS.index(name)] = value
        self.wakeup.notify()

    def target(self, name: str) -> int:
        return int(self._targets[TARGETS.index(name)])

    def set_counter(self, counter: str, value: int) -> None:
        """Set a counter outright (resume restores counters from a checkpoint)."""
        atomics.store(self._counter_addr + 8 * COUNTERS.index(counter), value)

    # --- episodes ---------------------------------------------------------------------------
    def report_episode(self, slot: int, ret: float, length: int) -> None:
        """Log one finished episode."""
        self.report_episodes(slot, np.array([ret]), np.array([length]))

    def report_episodes(self, slot: int, returns: np.ndarray, lengths: np.ndarray) -> None:
        """Log finished episodes with one reservation; stamps are written last so readers never see half a row."""
        k = len(returns)
        if k == 0:
            return
        i = atomics.fetch_add(self._ep_cursor_addr, k)
        rows = (i + np.arange(k)) % EPISODE_LOG
        self._ep_log[rows, 3] = 0
        self._ep_log[rows, 0], self._ep_log[rows, 1], self._ep_log[rows, 2] = returns, lengths, slot
        atomics.fence()
        self._ep_log[rows, 3] = i + 1 + np.arange(k)
        self.add("episodes", k)

    def episodes_since(self, cursor: int) -> tuple[np.ndarray, int]:
        """Episodes logged since `cursor` as rows (return, length, slot); and the new cursor."""
        end = int(self._ep_cursor[0])
        idx = np.arange(max(cursor, end - EPISODE_LOG), end)
        rows = self._ep_log[idx % EPISODE_LOG].copy()
        return rows[rows[:, 3] == idx + 1, :3], end

    # --- the monitor's snapshot -------------------------------------------------------------
    def publish_snapshot(self, snapshot: dict) -> None:
        """One writer (the monitor). Seqlock: odd while writing, so a reader retries a torn copy."""
        data = json.dumps(snapshot, separators=(",", ":")).encode()[:SNAPSHOT_BYTES]
        seq = atomics.load(self._snap_addr)
        atomics.store(self._snap_addr, seq + 1)  # odd: a write is in progress
        atomics.fence()  # the bytes below may not be seen before the odd mark
        self._snapshot[: len(data)] = np.frombuffer(data, np.uint8)
        self._snap_seq[1] = len(data)
        atomics.store(self._snap_addr, seq + 2)  # store is SEQ_CST: the bytes are visible before it

    def read_snapshot(self, tries: int = 100) -> dict | None:
        """The latest snapshot, or None before the monitor's first one (or if it stays torn)."""
        for _ in range(tries):
            seq = atomics.load(self._snap_addr)
            if seq == 0:
                return None
            if seq % 2:
                time.sleep(0.0005)
                continue
            n = int(self._snap_seq[1])
            data = self._snapshot[:n].tobytes()
            atomics.fence()
            if atomics.load(self._snap_addr) == seq:
                try:
                    return json.loads(data)
                except ValueError:  # cut at SNAPSHOT_BYTES: should not happen, never fatal
                    return None
        return None

    # --- membership -------------------------------------------------------------------------
    def claim(self, kind: Kind, pid: int | None = None, flags: int = 0, index: int = -1) -> int:
        """Take a free slot atomically; return its number. Raises RuntimeError when all are taken."""
        for slot in range(self.max_members):
            if atomics.compare_exchange(self._member_addr + 64 * slot, State.FREE, State.CLAIMED)[0]:
                row = self.members[slot]
                row[M_KIND], row[M_PID], row[M_FLAGS] = kind, pid or os.getpid(), flags
                row[M_STEPS], row[M_WEIGHTS], row[M_INDEX] = 0, 0, index
                row[M_HEARTBEAT] = time.monotonic_ns()
                atomics.store(self._member_addr + 64 * slot, State.RUNNING)
                self.wakeup.notify()
                return slot
        raise RuntimeError(f"all {self.max_members} member slots are taken")

    def heartbeat(self, slot: int, steps: int | None = None, weights: int | None = None) -> None:
        row = self.members[slot]
        row[M_HEARTBEAT] = time.monotonic_ns()  # CLOCK_MONOTONIC is one clock for every process
        if steps is not None:
            row[M_STEPS] = steps
        if weights is not None:
            row[M_WEIGHTS] = weights

    def state(self, slot: int) -> State:
        return State(int(self.members[slot, M_STATE]))

    def retire(self, slot: int) -> bool:
        """Ask a running member to leave; True if it was running."""
        ok = atomics.compare_exchange(self._member_addr + 64 * slot, State.RUNNING, State.RETIRING)[0]
        self.wakeup.notify()
        return ok

    def leave(self, slot: int) -> None:
        """Release a slot (its owner on exit, or the supervisor for a dead member)."""
        self.members[slot, 1:] = 0
        atomics.store(self._member_addr + 64 * slot, State.FREE)
        self.wakeup.notify()

    def live_members(self) -> list[dict]:
        """One dict per claimed slot: what the supervisor and the tools show."""
        now = time.monotonic_ns()
        rows = []
        for slot in np.flatnonzero(self.members[:, M_STATE] != State.FREE):
            r = self.members[slot].copy()
            rows.append(
                {
                    "slot": int(slot),
                    "state": State(int(r[M_STATE])).name.lower(),
                    "kind": Kind(int(r[M_KIND])).name.lower() if r[M_KIND] else "starting",
                    "pid": int(r[M_PID]),
                    "heartbeat_age_s": (now - int(r[M_HEARTBEAT])) / 1e9,
                    "steps": int(r[M_STEPS]),
                    "weights": int(r[M_WEIGHTS]),
                    "attached": bool(r[M_FLAGS] & ATTACHED),
                    "index": int(r[M_INDEX]),
                }
            )
        return rows

    def close(self) -> None:
        self._run = self._counters = self._targets = self.members = self._ep_log = self._ep_cursor = None
        self._snap_seq = self._snapshot = None
        self.segment.close()

    def destroy(self) -> None:
        self.close()
        self.segment.unlink()
