"""A Grid that delivers Messages straight to a ClientApp in this process.

Used by benchmarks and tests to run the real ServerApp and ClientApp code paths
(the same Message objects, handlers and ``context.state``) without Ray or a
SuperLink. Every message and reply is kept in ``log`` so tests can inspect
exactly what crossed the network.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE_ID = 0


def set_task_identity(run_id: int = 1) -> None:
    """Flower needs a task identity to build Messages outside a SuperLink."""
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SERVER_NODE_ID
    TaskIdentity.task_id = 1


class InProcessGrid(Grid):
    """Routes each pushed Message to ``client_app(msg, context_of_its_node)``."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, dict[str, Any]],
        run_config: dict[str, Any],
        run_id: int = 1,
    ) -> None:
        set_task_identity(run_id)
        self.client_app = client_app
        self.run_id = run_id
        self.contexts = {
            node: Context(run_id=run_id, node_id=node, node_config=dict(cfg),
                          state=RecordDict(), run_config=dict(run_config))
            for node, cfg in node_configs.items()
        }
        self.log: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._next = 0

    def set_run(self, run: Any) -> None:  # noqa: D401 - Grid interface
        self._run = run

    @property
    def run(self) -> Any:
        return getattr(self, "_run", None)

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content=content, dst_node_id=dst_node_id,
                       message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            self._next += 1
            msg_id = f"msg-{self._next}"
            self.log.append(msg)
            reply = self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            self.log.append(reply)
            self._replies[msg_id] = reply
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
