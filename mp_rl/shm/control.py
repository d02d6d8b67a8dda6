"""The control block: run-wide counters, the monitor's targets, membership slots and the stop flag.

Each member (actor, learner, monitor, an actor attached by hand) claims a slot with one CAS on
its state word, so two processes racing for slots never get the same one. A member row is one
64-byte cache line written only by its owner (heartbeat, steps), read by the supervisor and tools.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import struct
import time
from typing import ClassVar

import numpy as np

from mp_rl.shm import atomics
from mp_rl.shm.segment import Layout, Segment, SegmentError
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
REMOTE = 2  # member flag: a Ray actor, possibly on another machine; its pid is the ingest's that writes for it

# Column meaning of a member row (eight int64 words = one cache line). Private to this file:
# everyone else uses the accessors below. The state word is `generation << 8 | State`: each claim of a
# slot bumps its generation, so a compare-and-swap on the word acts on one occupant, never its successor.
M_STATE, M_KIND, M_PID, M_HEARTBEAT, M_STEPS, M_WEIGHTS, M_FLAGS, M_INDEX = range(8)
_STATE_BITS = 0xFF
COUNTERS = ("env_steps", "episodes", "updates", "learner_wait_ns", "actor_blocked_ns")
EPISODE_LOG = 1024  # recent episodes kept for the status line: (return, length, slot, stamp)
TARGETS = ("actors", "batch_size", "capacity", "envs_per_actor", "width")
SNAPSHOT_BYTES = 64 * 1024  # the monitor's latest snapshot, as JSON, under a seqlock


@dataclasses.dataclass(frozen=True)
class Header:
    """The first words of a control segment: enough for cleanup to judge whether its run is alive."""

    magic: int
    owner_pid: int
    created_ns: int

    HEADER_BYTES: ClassVar[int] = 32

    @classmethod
    def parse(cls, data: bytes) -> Header | None:
        """None when the segment is shorter than a header (created, not yet sized)."""
        if len(data) < cls.HEADER_BYTES:
            return None
        magic, pid, _stop, created_ns = struct.unpack_from("<qqqq", data)  # the `run` words, in order
        return cls(magic, pid, created_ns)

    @property
    def stamped(self) -> bool:
        """The magic is written last at creation: before it, the other words mean nothing yet."""
        return self.magic >> 32 == MAGIC >> 32


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
        self._members = v["members"]
        self._ep_log, self._ep_cursor = v["ep_log"], v["ep_cursor"]
        self._ep_cursor_addr = atomics.address_of(v["ep_cursor"])
        self._snap_seq, self._snapshot = v["snap_seq"], v["snapshot"]
        self._snap_addr = atomics.address_of(v["snap_seq"])
        self._counter_addr = atomics.address_of(v["counters"])
        self._member_addr = atomics.address_of(self._members.reshape(-1))
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
        atomics.fence()  # pid and time are visible before the magic that vouches for them (cleanup reads them)
        atomics.store(atomics.address_of(cb._run), MAGIC)
        return cb

    @classmethod
    def attach(cls, name: str, max_members: int) -> ControlBlock:
        cb = cls(Segment.attach(name, cls.layout_for(max_members).size), max_members)
        if int(cb._run[0]) != MAGIC:
            cb.close()
            raise SegmentError(f"segment {name} is not an mp_rl control block of this version")
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
        """Log finished episodes with one reservation. Each row is a seqlock: its stamp is zeroed,
        the data written, then the stamp set to index + 1; readers keep a row only if they saw
        that stamp both before and after copying it."""
        k = len(returns)
        if k == 0:
            return
        i = atomics.fetch_add(self._ep_cursor_addr, k)
        rows = (i + np.arange(k)) % EPISODE_LOG
        self._ep_log[rows, 3] = 0
        atomics.fence()  # the zeroed stamps are visible before any new byte of the rows
        self._ep_log[rows, 0:3] = np.stack([returns, lengths, np.full(k, slot)], axis=1)
        atomics.fence()  # every byte of the rows is visible before the stamps that vouch for them
        self._ep_log[rows, 3] = i + 1 + np.arange(k)
        self.add("episodes", k)

    def episodes_since(self, cursor: int) -> tuple[np.ndarray, int]:
        """Episodes logged since `cursor` as rows (return, length, slot); and the new cursor.

        A row a writer is still filling, or one lapped during the copy, is left out."""
        end = atomics.load(self._ep_cursor_addr)
        idx = np.arange(max(cursor, end - EPISODE_LOG), end)
        slots = idx % EPISODE_LOG
        before = self._ep_log[slots, 3]
        atomics.fence()  # the stamps are read before the data they vouch for
        rows = self._ep_log[slots, 0:3]
        atomics.fence()  # the data is read before the stamps are read again
        after = self._ep_log[slots, 3]
        return rows[(before == idx + 1) & (after == idx + 1)], end

    # --- the monitor's snapshot -------------------------------------------------------------
    def publish_snapshot(self, snapshot: dict) -> None:
        """One writer (the monitor). Seqlock: odd while writing, so a reader retries a torn copy."""
        data = json.dumps(snapshot, separators=(",", ":")).encode()[:SNAPSHOT_BYTES]
        seq = atomics.load(self._snap_addr)
        atomics.store(self._snap_addr, seq + 1)  # odd: a write is in progress
        atomics.fence()  # the bytes below may not be seen before the odd mark
        self._snapshot[: len(data)] = np.frombuffer(data, np.uint8)
        self._snap_seq[1] = len(data)
        atomics.fence()  # the bytes are visible before the even mark (on arm64 a seq-cst store is only a release)
        atomics.store(self._snap_addr, seq + 2)

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
            atomics.fence()  # the bytes are read before the sequence is read again
            if atomics.load(self._snap_addr) == seq:
                try:
                    return json.loads(data)
                except ValueError:  # cut at SNAPSHOT_BYTES: should not happen, never fatal
                    return None
        return None

    # --- membership -------------------------------------------------------------------------
    def _word(self, slot: int) -> int:
        return int(self._members[slot, M_STATE])

    def _cas(self, slot: int, old: int, new: int) -> bool:
        return atomics.compare_exchange(self._member_addr + 64 * slot, old, new)[0]

    def claim(self, kind: Kind, pid: int | None = None, flags: int = 0, index: int = -1) -> int:
        """Take a free slot atomically (a new generation of it); return its number. Raises
        RuntimeError when all are taken."""
        for slot in range(self.max_members):
            word = self._word(slot)
            gen = (word >> 8) + 1
            if word & _STATE_BITS == State.FREE and self._cas(slot, word, gen << 8 | State.CLAIMED):
                row = self._members[slot]
                row[M_KIND], row[M_PID], row[M_FLAGS] = kind, os.getpid() if pid is None else pid, flags
                row[M_STEPS], row[M_WEIGHTS], row[M_INDEX] = 0, 0, index
                row[M_HEARTBEAT] = time.monotonic_ns()
                atomics.store(self._member_addr + 64 * slot, gen << 8 | State.RUNNING)
                self.wakeup.notify()
                return slot
        raise RuntimeError(f"all {self.max_members} member slots are taken")

    def generation(self, slot: int) -> int:
        """How many times `slot` has been claimed: which occupant a snapshot of it saw."""
        return self._word(slot) >> 8

    def take_over(self, slot: int, generation: int) -> bool:
        """Hold the slot of occupant `generation` (found dead) so that no one claims it while its
        leftovers are cleared; then `leave`. False when that occupant has already gone (the slot is
        free, or a newer generation holds it): there is nothing of it to clear."""
        while True:
            word = self._word(slot)
            if word >> 8 != generation or word & _STATE_BITS == State.FREE:
                return False
            if self._cas(slot, word, generation << 8 | State.CLAIMED):
                return True

    def heartbeat(self, slot: int, steps: int | None = None, weights: int | None = None) -> None:
        row = self._members[slot]
        row[M_HEARTBEAT] = time.monotonic_ns()  # CLOCK_MONOTONIC is one clock for every process
        if steps is not None:
            row[M_STEPS] = steps
        if weights is not None:
            row[M_WEIGHTS] = weights

    def heartbeat_age(self, slot: int) -> float | None:
        """Seconds since the member in `slot` last beat; None when the slot is free (nobody to beat)."""
        beat = int(self._members[slot, M_HEARTBEAT])
        if self.state(slot) is State.FREE or not beat:
            return None
        return (time.monotonic_ns() - beat) / 1e9

    def set_pid(self, slot: int, pid: int) -> None:
        """The process that now holds `slot` (a member spawned with pid 0 fills in its own)."""
        self._members[slot, M_PID] = pid

    def pid(self, slot: int) -> int:
        return int(self._members[slot, M_PID])

    def set_index(self, slot: int, index: int) -> None:
        """The member's place in the Ape-X epsilon schedule."""
        self._members[slot, M_INDEX] = index

    def state(self, slot: int) -> State:
        return State(self._word(slot) & _STATE_BITS)

    def free_slots(self) -> int:
        return int(((self._members[:, M_STATE] & _STATE_BITS) == State.FREE).sum())

    def retire(self, slot: int) -> bool:
        """Ask a running member to leave; True if it was running."""
        word = self._word(slot)
        ok = word & _STATE_BITS == State.RUNNING and self._cas(slot, word, word & ~_STATE_BITS | State.RETIRING)
        self.wakeup.notify()
        return ok

    def leave(self, slot: int) -> None:
        """Release a slot (its owner on exit, or the supervisor for a dead member it took over)."""
        gen = self._word(slot) >> 8
        self._members[slot, 1:] = 0
        atomics.store(self._member_addr + 64 * slot, gen << 8 | State.FREE)
        self.wakeup.notify()

    def live_members(self) -> list[dict]:
        """One dict per claimed slot: what the supervisor and the tools show."""
        now = time.monotonic_ns()
        rows = []
        for slot in np.flatnonzero((self._members[:, M_STATE] & _STATE_BITS) != State.FREE):
            r = self._members[slot].copy()
            rows.append(
                {
                    "slot": int(slot),
                    "state": State(int(r[M_STATE]) & _STATE_BITS).name.lower(),
                    "generation": int(r[M_STATE]) >> 8,
                    "kind": Kind(int(r[M_KIND])).name.lower() if r[M_KIND] else "starting",
                    "pid": int(r[M_PID]),
                    "heartbeat_age_s": (now - int(r[M_HEARTBEAT])) / 1e9,
                    "steps": int(r[M_STEPS]),
                    "weights": int(r[M_WEIGHTS]),
                    "attached": bool(r[M_FLAGS] & ATTACHED),
                    "remote": bool(r[M_FLAGS] & REMOTE),
                    "index": int(r[M_INDEX]),
                }
            )
        return rows

    def close(self) -> None:
        self._run = self._counters = self._targets = self._members = self._ep_log = self._ep_cursor = None
        self._snap_seq = self._snapshot = None
        self.segment.close()

    def destroy(self) -> None:
        self.close()
        self.segment.unlink()
