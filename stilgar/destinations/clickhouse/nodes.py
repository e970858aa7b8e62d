"""The ClickHouse nodes one destination may send to, each with an explicit
state: UP, or DOWN until a retry time (backoff per node).

Queries stick to one healthy node (the *current* one) so that a replica's
own reads follow its writes; a node that fails is marked down and the work
moves to the next node in configuration order. A down node is tried again
once its retry time has come (one request decides: success brings it back).
"""

import enum

import attr

from ...backoff import Backoff

__all__ = ["NodeState", "Node", "NodeSet"]


class NodeState(enum.Enum):
    UP = "up"
    DOWN = "down"


@attr.s(slots=True, eq=False)
class Node:
    url = attr.ib()
    backoff = attr.ib(factory=Backoff, repr=False)
    state = attr.ib(default=NodeState.UP)
    retry_at = attr.ib(default=0.0)
    last_error = attr.ib(default=None)

    def available(self, now):
        return self.state is NodeState.UP or now >= self.retry_at


@attr.s(slots=True)
class NodeSet:
    urls = attr.ib(converter=tuple)
    clock = attr.ib(repr=False)
    nodes = attr.ib(init=False)
    _current = attr.ib(init=False, default=0)

    def __attrs_post_init__(self):
        if not self.urls:
            raise ValueError("at least one ClickHouse URL")
        self.nodes = [Node(u) for u in self.urls]

    @property
    def current(self):
        return self.nodes[self._current]

    def candidates(self):
        """The nodes to try for one request, in order: the current node first,
        then the others in configuration order, skipping nodes still inside
        their backoff (all of them when every node is)."""
        now = self.clock.seconds()
        n = len(self.nodes)
        ordered = [self.nodes[(self._current + i) % n] for i in range(n)]
        ready = [node for node in ordered if node.available(now)]
        # every node inside its backoff: the caller backs off too, but its
        # request still goes to the node that has waited longest
        return ready or [min(ordered, key=lambda node: node.retry_at)]

    def succeeded(self, node):
        node.state = NodeState.UP
        node.backoff.reset()
        node.last_error = None
        if self.current.state is not NodeState.UP:
            self._current = self.nodes.index(node)

    def failed(self, node, error):
        node.state = NodeState.DOWN
        node.last_error = str(error)[:300]
        node.retry_at = self.clock.seconds() + node.backoff.next_delay()
        if node is self.current:
            self._current = (self._current + 1) % len(self.nodes)

    def next_retry(self):
        """Seconds until the first down node may be tried again (0 if one is up)."""
        now = self.clock.seconds()
        return max(0.0, min((0.0 if n.state is NodeState.UP else n.retry_at - now) for n in self.nodes))

    def status(self):
        return [{"url": n.url, "state": n.state.value, **({"error": n.last_error} if n.last_error else {})}
                for n in self.nodes]
