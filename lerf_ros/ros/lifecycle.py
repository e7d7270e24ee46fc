"""Managed (lifecycle) nodes: the ROS 2 node state machine around the trainer and the query node.

Both nodes are ``rclpy.lifecycle`` nodes with the standard interface: the services
``/<node>/change_state``, ``get_state``, ``get_available_states``, ``get_available_transitions`` and
``get_transition_graph`` (``lifecycle_msgs``), and the topic ``/<node>/transition_event``, so
``ros2 lifecycle set /lerf_trainer deactivate`` and Nav2's lifecycle manager drive them.

What each state holds (``ManagedNode``; the node classes fill in the hooks):

- **unconfigured**: parameters declared and checked; nothing loaded, subscribed, published or served.
- **configure** -> inactive: the weights are loaded and the model allocated (trainer: the session,
  resumed from the newest checkpoint; query node: the text encoder and the query engine); the
  publishers and services exist. While inactive the services answer ``success: false`` with "...
  is inactive" (as Nav2's servers reject goals while inactive): a client waiting for a service does
  not hang, and it learns why.
- **activate** -> active: input subscriptions, training (trainer), snapshot preparation and answers
  (query node), /lerf/status and /diagnostics.
- **deactivate** -> inactive: everything ``activate`` created is destroyed again (subscriptions,
  timers, /diagnostics), ingestion stops (a TF lookup still waiting is given up; a frame being handed
  over to the session, if any, is waited for, which may take as long as that frame's keyframe and
  change checks; no frame reaches the session after the transition), training stops after the step in
  flight and a checkpoint of unsaved steps is written; the query node's snapshot preparer pauses (a
  preparation under way finishes, none starts after; ``activate`` resumes the same one). The model,
  the keyframes and the last prepared snapshot stay, so ``activate`` goes on where it stopped. On
  CUDA the allocator's cached blocks are handed back (``release_memory``).
- **cleanup** -> unconfigured: everything ``configure`` created is destroyed; the model, keyframes,
  teacher and snapshots are dropped and the freed memory returned to the system (the resident set
  falls); ``configure`` loads them again (the trainer resumes from its checkpoint).
- **shutdown** (from any of the three states) -> finalized: as deactivate and cleanup; once every
  node of the process is finalized the process exits with code 0 (``spin_nodes``).

``autostart`` (a parameter of both nodes, default true) makes a node configure and activate itself
when it starts, as the nodes always did; false leaves it unconfigured for a lifecycle manager. A
failed transition logs its reason, leaves the node where it was (configure: unconfigured, activate:
inactive) and answers ``success: false``; with autostart the process then exits with code 2.

Entities are tracked by the transition that created them: whatever a node's ``configure_node``
creates (subscriptions, publishers, services, clients, timers) is destroyed at cleanup, whatever
``activate_node`` creates at deactivate. Transitions run one at a time (a lock shared with ``close``).
"""

from __future__ import annotations

import gc
import sys
import threading
from typing import Dict, List, Sequence

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from lerf_ros.mapping.memory import release_free_heap

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE

CLOSE_LOCK_WAIT_S = 2.0
"""Seconds ``close`` waits for a transition in progress (e.g. a configure loading weights)."""

_KINDS = ("subscriptions", "publishers", "services", "clients", "timers")


def release_memory() -> None:
    """Hand memory that is no longer used back: Python's cycles collected, CUDA's cached blocks
    released (when CUDA was used), and the C heap's free pages returned to the system (glibc
    ``malloc_trim``; freed tensors otherwise stay in the process's resident set)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    release_free_heap()


class TransitionFailed(RuntimeError):
    """An autostarted node could not reach 'active' (the message says which step and why)."""


class ManagedNode(LifecycleNode):
    """A lifecycle node with the behaviour of the module docstring.

    Subclasses implement ``configure_node``, ``activate_node``, ``deactivate_node`` and
    ``cleanup_node`` (each raises to fail; the undo of a failed configure/activate is the matching
    cleanup/deactivate, so they must cope with a partial build), and call ``start_lifecycle`` at
    the end of ``__init__``."""

    def __init__(self, node_name: str, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._transition_lock = threading.RLock()
        self._phase = "unconfigured"  # what the hooks have built: unconfigured, inactive, active, finalized
        self._owned: Dict[str, List] = {"configure": [], "activate": []}
        self.transition_error = ""
        """Why the last transition failed ('' after a success)."""

    # ------------------------------------------------------------------ for subclasses
    def configure_node(self) -> None:
        """Load weights, allocate, create publishers and services."""

    def activate_node(self) -> None:
        """Subscribe, start work, create timers."""

    def deactivate_node(self) -> None:
        """Stop the work ``activate_node`` started (its entities are destroyed afterwards)."""

    def cleanup_node(self) -> None:
        """Drop what ``configure_node`` built (its entities are destroyed afterwards)."""

    @property
    def phase(self) -> str:
        """'unconfigured', 'inactive', 'active' or 'finalized': what the node holds now."""
        return self._phase

    @property
    def active(self) -> bool:
        return self._phase == "active"

    def inactive_message(self) -> str:
        """The answer of a service while the node is not active."""
        name = self.get_fully_qualified_name()
        return (
            f"{self.get_name()} is {self._phase} (lifecycle): nothing is served until it is activated "
            f"({name}/change_state, e.g. `ros2 lifecycle set {name} activate`)"
        )

    def start_lifecycle(self, autostart: bool) -> None:
        """With ``autostart``: configure and activate now; raises ``TransitionFailed`` (after
        releasing what was built) when either fails."""
        if not autostart:
            self.get_logger().info("unconfigured: waiting for configure (autostart is false)")
            return
        for name, trigger in (("configure", self.trigger_configure), ("activate", self.trigger_activate)):
            if trigger() != SUCCESS:
                self.close()
                raise TransitionFailed(f"{self.get_name()}: {self.transition_error or name + ' failed'}")

    # ------------------------------------------------------------------ rclpy.lifecycle callbacks
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", "inactive", self.configure_node, self.cleanup_node)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", "active", self.activate_node, self.deactivate_node)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._stop("activate", self.deactivate_node, "inactive")
            release_memory()
            self.get_logger().info("deactivated: inactive")
        return SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._stop("configure", self.cleanup_node, "unconfigured")
            release_memory()
            self.get_logger().info("cleaned up: unconfigured")
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        with self._transition_lock:
            self._finalize()
        self.get_logger().info(f"shut down from {state.label}: finalized")
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Reached only when a callback raised past the guards above: release and go to unconfigured.
        with self._transition_lock:
            self._stop("activate", self.deactivate_node, "inactive")
            self._stop("configure", self.cleanup_node, "unconfigured")
        return SUCCESS

    def close(self) -> None:
        """Release everything from whatever state (the process is ending: SIGINT/SIGTERM, or a failed
        start); the state machine is left as it is. Bounded by ``CLOSE_LOCK_WAIT_S`` plus the hooks."""
        locked = self._transition_lock.acquire(timeout=CLOSE_LOCK_WAIT_S)
        try:
            self._finalize()
        finally:
            if locked:
                self._transition_lock.release()

    # ------------------------------------------------------------------ internals
    def _finalize(self) -> None:
        self._stop("activate", self.deactivate_node, "inactive")
        self._stop("configure", self.cleanup_node, "unconfigured")
        self._phase = "finalized"

    def _transition(self, name: str, phase: str, hook, undo) -> TransitionCallbackReturn:
        bucket = name
        with self._transition_lock:
            if self._phase == "finalized":
                return FAILURE
            before = self._entities()
            try:
                hook()
            except Exception as exc:  # a bad configuration, weights missing: say why, stay where we were
                self._own(bucket, before)
                self.transition_error = f"{name} failed: {exc}"
                self.get_logger().error(self.transition_error)
                try:
                    undo()
                except Exception as undo_exc:
                    self.get_logger().error(f"could not undo the failed {name}: {undo_exc!r}")
                self._destroy(bucket)
                return FAILURE
            self._own(bucket, before)
            self.transition_error = ""
            self._phase = phase
            self.get_logger().info(f"{name}d: {phase}")
            return SUCCESS

    def _stop(self, bucket: str, hook, phase: str) -> None:
        """Undo the ``bucket`` transition if the node is past it: the hook, then its entities."""
        reached = {"activate": ("active",), "configure": ("active", "inactive")}[bucket]
        if self._phase not in reached:
            return
        try:
            hook()
        except Exception as exc:  # the rest must still be released
            self.get_logger().error(f"error while undoing {bucket}: {exc!r}")
        self._destroy(bucket)
        self._phase = phase

    def _entities(self) -> Dict[str, set]:
        return {kind: {id(e) for e in getattr(self, kind)} for kind in _KINDS}

    def _own(self, bucket: str, before: Dict[str, set]) -> None:
        for kind in _KINDS:
            self._owned[bucket] += [(kind, e) for e in getattr(self, kind) if id(e) not in before[kind]]

    def _destroy(self, bucket: str) -> None:
        destroy = {
            "subscriptions": self.destroy_subscription,
            "publishers": self.destroy_publisher,
            "services": self.destroy_service,
            "clients": self.destroy_client,
            "timers": self.destroy_timer,
        }
        owned, self._owned[bucket] = self._owned[bucket], []
        for kind, entity in reversed(owned):
            try:
                destroy[kind](entity)
            except Exception as exc:  # already destroyed with its node: nothing left to release
                self.get_logger().debug(f"could not destroy a {kind[:-1]}: {exc!r}")


def all_finalized(nodes: Sequence[object]) -> bool:
    """Whether every node is a managed node that has been shut down (the process may end)."""
    return bool(nodes) and all(isinstance(n, ManagedNode) and n.phase == "finalized" for n in nodes)


__all__ = ["ManagedNode", "TransitionFailed", "all_finalized", "release_memory", "SUCCESS", "FAILURE"]
