"""`python -m mp_rl.attach runs/<id> --ray ADDRESS --actors N`: actors on a Ray cluster, writing into a live run.

The attach process (on the learner's machine) connects to Ray (`ADDRESS` as `ray.init` takes it;
`local` starts a private instance), starts one ingest on this node, pinned here by node id, and N
actors placed across the cluster (one CPU each, spread). Each actor joins the run through the ingest
(a member slot, shown as `(ray)`), steps its envs and sends whole blocks with at most `window` calls
in flight. The attach process then watches: an actor whose node died is reported and its slot
freed, the run goes on; the ingest dying ends the attach with one line (the supervisor frees the
slots it held and voids any block it was writing); Ctrl-C retires every actor (each finishes its
block) and waits for them; the run ending ends them.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import torch
from setproctitle import setproctitle

from mp_rl.agent.actor import RETIRE_GRACE_S, Actor, Detached
from mp_rl.agent.envspec import EnvSpec
from mp_rl.config import Config
from mp_rl.remote.ingest import Ingest
from mp_rl.remote.link import Link, LinkedRun, Transport
from mp_rl.shm.ringspec import RingSpec

WINDOW = 4  # blocks in flight per remote actor: enough to hide a round trip, few enough to feel the limiter


def import_ray():
    """Ray, or ValueError with the line that says how to get it (the extra is optional)."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray, which is not installed: pip install -e '.[ray]'") from None
    return ray


def title(run_id: str, member: str) -> str:
    return f"mp_rl[{run_id}] {member}"


def retitle(text: str) -> None:
    """Title a Ray worker. Ray titles its workers itself (`ray::Class.method`, again at every call) and
    keeps the title it knows in its own setter: one that bypasses it is undone at the next call."""
    import ray

    getattr(ray._raylet, "setproctitle", setproctitle)(text)


class RayIngest(Ingest):
    """The ingest as a Ray actor: titled, logging into the run folder, sharing weights with `ray.put`."""

    def __init__(self, run_dir: str, run_id: str):
        import ray

        retitle(title(run_id, "ingest (ray)"))  # until its first call: Ray then shows `ray::RayIngest.<call>`
        Ingest.log_to(run_dir)
        super().__init__(run_dir, put=ray.put)


def ray_transport(handle) -> Transport:
    import ray

    def wait(refs, timeout: float) -> list:
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        return done or ray.wait(list(refs), num_returns=1, timeout=timeout)[0]

    return Transport(call=lambda method, *args: getattr(handle, method).remote(*args), wait=wait, get=ray.get)


class RayActor:
    """One remote actor: join through the ingest, run `Actor` over a `Link`, return what it did."""

    def __init__(self, key: int, cfg_json: dict, spec: EnvSpec, ring: RingSpec, run_id: str, ingest, window: int):
        self.key, self.cfg_json, self.spec, self.ring, self.run_id = key, cfg_json, spec, ring, run_id
        self.ingest, self.window = ingest, window

    def run(self) -> dict:
        import ray

        host = socket.gethostname()
        joined = ray.get(self.ingest.join.remote(self.key, host))
        if joined is None:
            return {"key": self.key, "slot": None, "host": host, "steps": 0, "ended": "no slot (run full or ending)"}
        slot = joined["slot"]
        retitle(title(self.run_id, f"actor-{slot} (ray)"))  # its one call runs as long as it does
        link = Link(ray_transport(self.ingest), self.key, self.window)
        link.absorb(joined["reply"])
        cfg = Config.model_validate(self.cfg_json)
        torch.set_num_threads(cfg.actors.torch_threads)
        seed = cfg.run.seed + 10_007 * (slot + 1) + os.getpid()
        actor = Actor(cfg, LinkedRun(link, self.ring), self.spec, slot, index=slot, count=joined["count"], seed=seed)
        try:
            actor.run(run_alive=lambda: link.lost is None)
            if link.lost is None:
                link.drain()  # every block sent has landed before the slot is released
        except Detached:  # the ingest was lost while draining: `link.lost` says how
            pass
        finally:
            actor.close()
        ended = "the ingest is gone" if link.lost else "the run stopped" if link.stopping else "detached"
        return {"key": self.key, "slot": slot, "host": host, "steps": actor.steps, "ended": ended,
                "blocks": link.sent_blocks}  # fmt: skip


def reachable(address: str, timeout: float = 5.0) -> None:
    """A `host:port` with nothing listening: ValueError now. `ray.init` would retry it for minutes."""
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        raise ValueError(f"--ray {address}: Ray Client addresses are not supported; give the head's host:port")
    if not sep or not port.isdigit():
        return  # `auto` and the like: ray.init resolves them (and fails at once when there is no cluster)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(f"--ray {address}: nothing answers there ({exc.strerror or exc}); is `ray start --head` "
                         "running on that machine?") from None  # fmt: skip


def init_ray(ray, address: str) -> None:
    """Connect (or, `local`, start a private instance); usage statistics stay off unless asked for."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    reachable(address)
    if address == "local":
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


class RayAttach:
    """The attach process's side: start the ingest and the actors, watch them, detach them."""

    def __init__(self, ray, run_dir: str, run_id: str, n: int, cfg: Config, spec: EnvSpec, ring: RingSpec,
                 window: int = WINDOW):  # fmt: skip
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.ray, self.run_id, self.n, self.asked = ray, run_id, n, 0
        here = ray.get_runtime_context().get_node_id()  # this process's node: where the ring is
        self.ingest = (ray.remote(RayIngest)
                       .options(num_cpus=0, max_concurrency=n * window + 8, max_restarts=0,
                                scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
                       .remote(run_dir, run_id))  # fmt: skip
        self.watch = self.ingest.until_closed.remote()
        remote = ray.remote(RayActor).options(num_cpus=1, scheduling_strategy="SPREAD", max_restarts=0)
        cfg_json = cfg.model_dump(mode="json")
        self.actors = {k: remote.remote(k, cfg_json, spec, ring, run_id, self.ingest, window) for k in range(n)}
        self.runs = {actor.run.remote(): k for k, actor in self.actors.items()}
        self.results: list[dict] = []

    def on_signal(self, signum, _frame) -> None:
        self.asked += 1

    def watch_until_done(self) -> int:
        """Until every actor has ended; 1 when the ingest died or an actor did not end cleanly."""
        try:
            return self._watch()
        except self.ray.exceptions.RayActorError:  # a call on the ingest found it dead: Ray may report an
            return self._ingest_died()  # actor's end, or we may retire or close, before the watch fails

    def _watch(self) -> int:
        ray, retired_at, code = self.ray, None, 0
        while self.runs:
            ready, _ = ray.wait([*self.runs, self.watch], num_returns=1, timeout=0.5)
            if self.watch in ready:
                return self._ingest_died()
            for ref in ready:
                code |= self._ended(ref)
            if self.asked and retired_at is None:
                retired_at = time.monotonic()
                ray.get(self.ingest.retire.remote())
            if retired_at is not None and time.monotonic() - retired_at > RETIRE_GRACE_S + 10:
                for ref, key in list(self.runs.items()):  # an actor that did not finish in time
                    ray.kill(self.actors[key])
                    self._lost(key, "did not detach in time")
                    self.runs.pop(ref)
                code = 1
        ray.get(self.ingest.close.remote())
        return code

    def _ended(self, ref) -> int:
        """An actor's run returned: report it and free its slot. RayActorError when the ingest is dead
        (the actor stays counted in `runs`, as one the ingest's death stopped)."""
        key = self.runs[ref]
        try:
            out = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:  # its node died (or its process)
            self.runs.pop(ref)
            self._lost(key, f"its node or process died ({type(exc).__name__})")
            return 0  # the run goes on without it: not a failure of the attach
        except self.ray.exceptions.RayTaskError as exc:
            self.runs.pop(ref)
            self._lost(key, str(exc).strip().splitlines()[-1])
            return 1
        if out["slot"] is not None:
            self.ray.get(self.ingest.release.remote(key, out["ended"]))
        self.runs.pop(ref)
        self.results.append(out)
        if out["slot"] is None:  # it started after Ctrl-C (fine), or found the run full or ending
            if not self.asked:
                print(f"mp_rl.attach: a Ray actor on {out['host']} did not join: {out['ended']}", flush=True)
            return 0 if self.asked else 1
        return 0 if out["ended"] != "the ingest is gone" else 1

    def _lost(self, key: int, why: str) -> None:
        try:
            slot = self.ray.get(self.ingest.release.remote(key, why), timeout=10)
        except self.ray.exceptions.RayError:
            slot = None
        name = f"actor-{slot} (ray)" if slot is not None else f"remote actor {key}"
        print(f"mp_rl.attach: {name} lost: {why}; its slot is freed, the run goes on", flush=True)

    def _ingest_died(self) -> int:
        try:
            self.ray.get(self.watch, timeout=30)  # Ray may not have seen the death yet when a release did
            why = "it closed"
        except self.ray.exceptions.RayError as exc:
            why = type(exc).__name__
        for actor in self.actors.values():
            self.ray.kill(actor)
        print(f"mp_rl.attach: the ingest on this machine died ({why}); {len(self.runs)} remote actor(s) stopped, "
              "the run's supervisor frees their slots", flush=True)  # fmt: skip
        return 1

    def summary(self) -> list[str]:
        """A line per actor that ended on its own (slot, host, steps, why), then the total."""
        done = sorted((r for r in self.results if r["slot"] is not None), key=lambda r: r["slot"])
        lines = [f"actor-{r['slot']} (ray) on {r['host']}: {r['steps']:,} env steps, {r['ended']}" for r in done]
        total = sum(r["steps"] for r in done)
        return [*lines, f"detached: {len(done)} of {self.n} Ray actor(s) ended cleanly, {total:,} env steps"]


def run_on_ray(run_dir: str, run_id: str, n: int, cfg: Config, spec: EnvSpec, ring: RingSpec, address: str) -> int:
    """The attach process with `--ray`: returns its exit code."""
    ray = import_ray()
    setproctitle(title(run_id, "attach (ray)"))
    try:
        init_ray(ray, address)
    except ValueError:
        raise
    except (ConnectionError, RuntimeError) as exc:  # no cluster there: bad input, nothing started
        raise ValueError(f"--ray {address}: cannot connect ({str(exc).strip().splitlines()[0]})") from None
    try:
        attach = RayAttach(ray, run_dir, run_id, n, cfg, spec, ring)
        signal.signal(signal.SIGINT, attach.on_signal)
        signal.signal(signal.SIGTERM, attach.on_signal)
        print(f"mp_rl.attach: {n} Ray actor(s) joining run {run_id} ({len(ray.nodes())} node(s)); Ctrl-C detaches "
              "them", flush=True)  # fmt: skip
        code = attach.watch_until_done()
        for line in attach.summary():
            print(f"mp_rl.attach: {line}", flush=True)
        return code
    finally:
        ray.shutdown()
