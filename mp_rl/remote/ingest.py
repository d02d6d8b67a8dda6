"""The ingest: on the learner's machine, it writes remote actors' blocks into the run's ring.

It attaches the run's segments from the run folder like any member and writes each block through a
`RingWriter` with the remote actor's slot as token, exactly as a local actor would: rows are stamped
after they land, a block that cannot be finished is never stamped, and the rate limiter holds a
write back (the remote actor's window of calls fills, which is how backpressure reaches it).

Each remote actor is a member: `join` claims a slot (flags ATTACHED | REMOTE, pid this process's,
so the supervisor frees them all if this process dies), the reports that come with every call
become its heartbeat, episodes and counters. `release` frees a slot when its actor is gone (a node
that died): calls still inside for that slot are let out first, so no late write lands under a
slot that someone else may claim next.

A plain object: the Ray actor in `mp_rl.remote.ray_attach` wraps it; tests call it directly. It is
called from several threads at once (one per call in flight), so shared state is under one lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from mp_rl.agent.actor import RETIRE_GRACE_S
from mp_rl.cli import owner_only
from mp_rl.runfolder import RunFolder
from mp_rl.shm.control import ATTACHED, REMOTE, Kind, State
from mp_rl.shm.manifest import SharedRun, owner_alive, read_manifest
from mp_rl.shm.ring import RingClosed

log = logging.getLogger("mp_rl.ingest")
PUT_EVERY_S = 0.05  # at most this often a new weights object: the learner may publish hundreds a second
RELEASE_WAIT_S = 5.0  # how long `release` waits for a released slot's calls to leave before it returns


class Ingest:
    def __init__(self, run_dir: str, put: Callable[[np.ndarray], object] = np.copy):
        self.shared = SharedRun.attach(run_dir)
        self.manifest = read_manifest(run_dir)
        self.control, self.ring, self.board = self.shared.control, self.shared.ring, self.shared.board
        self.put = put  # ray.put: one object per weights version, read by every remote actor
        self.lock = threading.Lock()
        self.sharing = threading.Lock()  # the weights' copy and put: calls entering and leaving slots never wait on it
        self.left = threading.Condition(self.lock)  # a call left its slot: `release` may be waiting for that
        self.slots: dict[int, int] = {}  # remote actor's key -> its slot
        self.where: dict[int, str] = {}  # key -> the host it runs on
        self.live: set[int] = set()  # slots whose actor has not been released
        self.inside: dict[int, int] = {}  # slot -> calls in progress
        self.leaving: dict[int, str] = {}  # released slots a call was still inside: the last one out frees them
        self.writers: dict[int, object] = {}
        self.flat = torch.empty(self.board.numel, dtype=torch.float32)
        self.version, self.weights, self.put_at, self.shape = 0, None, 0.0, (self.board.numel,)
        self.alive_at, self.run_alive = 0.0, True
        self.closed = threading.Event()
        self.retiring = False  # Ctrl-C on the attach: an actor that starts late does not join

    # --- membership ---------------------------------------------------------------------------
    def join(self, key: int, host: str) -> dict | None:
        """Claim a slot for remote actor `key`; None when every slot is taken or the run is stopping."""
        with self.lock:
            if self.closed.is_set() or self.retiring or self.control.stopping:
                return None
            try:
                slot = self.control.claim(Kind.ACTOR, pid=os.getpid(), flags=ATTACHED | REMOTE, index=-1)
            except RuntimeError:
                return None
            self.control.set_index(slot, slot)  # its place in the Ape-X schedule is its slot, as attached actors
            self.slots[key], self.where[key], self.inside[slot] = slot, host, 0
            self.live.add(slot)
            self.writers[slot] = self.ring.writer(token=slot + 1)
        log.info("actor-%d (ray) joined from %s", slot, host)
        return {"slot": slot, "count": self.control.max_members, "reply": self._reply(slot)}

    def release(self, key: int, why: str = "") -> int | None:
        """Free the slot of actor `key` (gone, or done): let its calls out, void what it holds, leave."""
        with self.lock:
            slot = self.slots.pop(key, None)
            self.live.discard(slot)
        if slot is None:
            return None
        with self.left:  # each call inside leaves within one wait of 0.25 s once the slot is not live
            if not self.left.wait_for(lambda: not self.inside.get(slot, 0), timeout=RELEASE_WAIT_S):
                # A call still inside may yet write with the slot's token: freeing the slot now would
                # let a newcomer share the token. The slot is kept; the last call out frees it.
                self.leaving[slot] = f"{why}; freed when its last call left" if why else "freed when its last call left"
                log.warning("actor-%d (ray): a call is still inside after %.0f s; its slot is kept until it leaves",
                            slot, RELEASE_WAIT_S)  # fmt: skip
                return slot
            self._free(slot, key, why)
        return slot

    def _free(self, slot: int, key: int | None, why: str) -> None:
        """Void what the slot's writer holds and leave it (no call is inside: `left` held)."""
        self.inside.pop(slot, None)
        self.writers.pop(slot, None)
        voided = self.ring.void_member(slot + 1)  # a block it could not finish is never stamped
        if self.control.state(slot) != State.FREE and self.control.pid(slot) == os.getpid():
            self.control.leave(slot)
        log.info("actor-%d (ray) from %s left%s; %d block(s) voided", slot, self.where.get(key, "?"),
                 f" ({why})" if why else "", voided)  # fmt: skip

    def retire(self) -> int:
        """Ask every remote actor to finish its block and go (Ctrl-C on the attach)."""
        with self.lock:
            self.retiring = True
            slots = list(self.slots.values())
        return sum(self.control.retire(slot) for slot in slots)

    # --- the calls remote actors make -----------------------------------------------------------
    def write(self, key: int, rows: dict[str, np.ndarray], frames: np.ndarray | None, report: dict) -> dict:
        """One block into the ring (waiting while the rate limiter says no), then the run's word."""
        return self._as_member(key, report, lambda slot: self._write(slot, rows, frames))

    def beat(self, key: int, report: dict) -> dict:
        """The report alone (an actor between blocks), then the run's word."""
        return self._as_member(key, report)

    def _as_member(self, key: int, report: dict, work: Callable[[int], None] | None = None) -> dict:
        """Take the report for actor `key`'s slot, do `work`, reply; counted as inside the slot meanwhile,
        so `release` can wait for it. A call for a slot released before or during it is told to go."""
        with self.lock:
            slot = self.slots.get(key)
            if slot is None:
                return self._gone()
            self.inside[slot] += 1
        try:
            self._apply(slot, report)
            if work is not None:
                work(slot)
            return self._reply(slot) if slot in self.live else self._gone()
        finally:
            with self.lock:
                self.inside[slot] = self.inside.get(slot, 1) - 1
                self.left.notify_all()
                if not self.inside[slot] and slot in self.leaving:  # released while this call was inside
                    self._free(slot, key, self.leaving.pop(slot))

    def _apply(self, slot: int, report: dict) -> None:
        control = self.control
        control.heartbeat(slot, steps=report["steps"], weights=report["weights"])
        if report["returns"]:
            control.report_episodes(slot, np.asarray(report["returns"]), np.asarray(report["lengths"]))
        for counter, n in report["counters"].items():
            control.add(counter, n)

    def _write(self, slot: int, rows: dict[str, np.ndarray], frames: np.ndarray | None) -> None:
        """Wait in the ring as an actor does; give up when the run stops, the slot is released, or the
        actor was retired `RETIRE_GRACE_S` ago (the block's rows were never reserved: nothing is left)."""
        writer, give_up = self.writers[slot], float("inf")
        try:
            while not writer.write(rows, timeout=0.25, frames=frames):
                self.control.heartbeat(slot)  # held by the rate limiter is healthy
                if self._stopping() or slot not in self.live:
                    return
                if self.control.state(slot) != State.RUNNING:
                    give_up = min(give_up, time.monotonic() + RETIRE_GRACE_S)
                if time.monotonic() >= give_up:
                    return
        except RingClosed:
            return

    def _stopping(self) -> bool:
        """The run stops, or its supervisor is gone (checked once a second: it reads /proc)."""
        if self.control.stopping or self.closed.is_set():
            return True
        now = time.monotonic()
        if now - self.alive_at > 1.0:
            self.alive_at, self.run_alive = now, owner_alive(self.manifest)
        return not self.run_alive

    def _reply(self, slot: int) -> dict:
        self._share_weights()
        return {"stopping": self._stopping(), "state": int(self.control.state(slot)), "version": self.version,
                "weights": self.weights, "shape": list(self.shape)}  # fmt: skip

    def _gone(self) -> dict:
        """The reply to a call for a slot already released: leave."""
        return {"stopping": True, "state": int(State.FREE), "version": self.version, "weights": self.weights,
                "shape": list(self.shape)}  # fmt: skip

    def _share_weights(self) -> None:
        """A newer version on the board becomes one new object (`put`), shared by every remote actor."""
        if self.board.version <= self.version or time.monotonic() - self.put_at < PUT_EVERY_S:
            return
        with self.sharing:
            if self.board.version <= self.version:
                return
            try:
                shape = self.board.latest_shape()  # a network that grew: its new size and layout
                flat = self.flat if self.flat.numel() == shape[0] else torch.empty(shape[0], dtype=torch.float32)
                version = self.board.read_into(flat, self.version, shape=shape[1:])
            except TimeoutError:  # a publisher racing every copy: the next reply tries again
                return
            if version > self.version:  # (a layout that moved on meanwhile: the next reply tries again)
                self.flat, self.shape = flat, shape
                self.weights, self.version, self.put_at = self.put(self.flat.numpy()), version, time.monotonic()

    # --- lifetime -----------------------------------------------------------------------------
    def until_closed(self) -> bool:
        """Returns when the ingest closes: the attach process watches this call to learn that it died."""
        self.closed.wait()
        return True

    def close(self) -> None:
        """Release every slot (their calls let out first), then unmap: nothing touches the segments after."""
        self.closed.set()
        for key in list(self.slots):
            self.release(key, "the attach ended")
        with self.lock:
            stuck = sorted(self.leaving)
        if stuck:  # a call still inside may touch the segments: they stay mapped until the process exits
            log.warning("slots %s: calls still inside at close; the segments stay mapped", stuck)
            return
        self.shared.close()

    @staticmethod
    def log_to(run_dir: str) -> None:
        """Log into the run folder, owner-only like the rest of it (a Ray actor has a process of its own)."""
        owner_only()
        handler = logging.FileHandler(RunFolder(run_dir).log("ingest-ray"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
