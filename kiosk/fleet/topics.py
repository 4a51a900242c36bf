"""The fleet topics of one kiosk: `{fleet.topic_prefix}/{kiosk_id}/…` (protocol.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

COMMANDS = ("ping", "rebirth", "set_maintenance", "reconcile", "cancel_order", "restart")


@dataclass(frozen=True, slots=True)
class Incoming:
    """What a fleet topic addresses: `kind` is ack, desired, cmd, job or state; `name` the command or job id."""

    kind: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one kiosk under a prefix."""

    prefix: str
    kiosk_id: str

    @property
    def base(self) -> str:
        """`fleet/v1/{kiosk_id}`."""
        return f"{self.prefix}/{self.kiosk_id}"

    @property
    def state(self) -> str:
        """Retained online/offline, and the Will."""
        return f"{self.base}/state"

    @property
    def info(self) -> str:
        """Retained description of the kiosk."""
        return f"{self.base}/info"

    @property
    def health(self) -> str:
        """Retained figures, every health period."""
        return f"{self.base}/health"

    @property
    def events(self) -> str:
        """Business events from the durable outbox."""
        return f"{self.base}/events"

    @property
    def events_ack(self) -> str:
        """The fleet's retained acknowledgement of events."""
        return f"{self.base}/events/ack"

    @property
    def config_desired(self) -> str:
        """The fleet's retained desired configuration."""
        return f"{self.base}/config/desired"

    @property
    def config_reported(self) -> str:
        """The configuration now in force, retained."""
        return f"{self.base}/config/reported"

    def cmd_res(self, name: str) -> str:
        """Where a command's response goes."""
        return f"{self.base}/cmd/{name}/res"

    def job_update(self, job_id: str) -> str:
        """A job's retained progress."""
        return f"{self.base}/jobs/{job_id}/update"

    def subscriptions(self) -> list[str]:
        """What the kiosk subscribes to (its own state too: a late Will is answered with a rebirth)."""
        return [
            self.events_ack,
            self.config_desired,
            f"{self.base}/cmd/+/req",
            f"{self.base}/jobs/+/doc",
            self.state,
        ]

    def owns(self, topic: str) -> bool:
        """Whether a delivered topic is one of this kiosk's fleet topics."""
        return topic.startswith(f"{self.base}/")

    def parse(self, topic: str) -> Incoming | None:  # noqa: PLR0911 - one answer per topic shape
        """What a delivered topic addresses, or None for anything else."""
        if not self.owns(topic):
            return None
        parts = topic[len(self.base) + 1 :].split("/")
        match parts:
            case ["events", "ack"]:
                return Incoming("ack")
            case ["config", "desired"]:
                return Incoming("desired")
            case ["cmd", name, "req"] if name:
                return Incoming("cmd", name)
            case ["jobs", job_id, "doc"] if job_id:
                return Incoming("job", job_id)
            case ["state"]:
                return Incoming("state")
        return None
