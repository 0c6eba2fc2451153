"""The support desk: tickets, departments, agents, and a stateless domain service.

:class:`ResponseDeadlines` is a *domain service*: the rule "when must the agent answer?" needs
the ticket's priority, the department's SLA and the agent's shift. It belongs to none of those
aggregates, so it lives in a service that reads all three and changes none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from ordering.domain.events import ResponseDeadlineSet, TicketEscalated, TicketOpened
from tidings import EventSourcedAggregate, applies


class Ticket(EventSourcedAggregate):
    id: str
    department: str
    agent_id: str
    priority: int
    escalations: int = 0
    respond_by: str | None = None

    @classmethod
    def open(
        cls, ticket_id: str, department: str, agent_id: str, priority: int, subject: str
    ) -> Ticket:
        if priority not in (1, 2, 3, 4):
            raise ValueError("priority is 1 (urgent) to 4 (low)")
        ticket = cls.blank(ticket_id)
        ticket.record(TicketOpened(ticket_id, department, agent_id, priority, subject))
        return ticket

    def escalate(self, reason: str) -> None:
        """Raise the priority by one step (1 is the highest)."""
        self.record(
            TicketEscalated(
                self.id, self.department, self.agent_id, max(1, self.priority - 1), reason
            )
        )

    def set_response_deadline(self, respond_by: datetime) -> None:
        self.record(ResponseDeadlineSet(self.id, self.agent_id, respond_by.isoformat()))

    @applies(TicketOpened)
    def _opened(self, event: TicketOpened) -> None:
        self.department = event.department
        self.agent_id = event.agent_id
        self.priority = event.priority
        self.escalations = 0
        self.respond_by = None

    @applies(TicketEscalated)
    def _escalated(self, event: TicketEscalated) -> None:
        self.priority = event.priority
        self.escalations += 1

    @applies(ResponseDeadlineSet)
    def _deadline(self, event: ResponseDeadlineSet) -> None:
        self.respond_by = event.respond_by


@dataclass(frozen=True)
class Department:
    """Service levels: hours of working time to respond, by priority."""

    name: str
    response_hours: dict[int, int]


@dataclass(frozen=True)
class Agent:
    """An agent works a daily shift, UTC, on the listed weekdays (0 = Monday)."""

    agent_id: str
    shift_start: time
    shift_end: time
    weekdays: frozenset[int] = frozenset(range(5))


class ResponseDeadlines:
    """Computes when an agent must respond: SLA hours counted in the agent's shifts only."""

    def respond_by(
        self, ticket: Ticket, department: Department, agent: Agent, now: datetime
    ) -> datetime:
        if ticket.department != department.name or ticket.agent_id != agent.agent_id:
            raise ValueError("the department and agent must be the ticket's own")
        hours = department.response_hours.get(ticket.priority)
        if hours is None:
            raise ValueError(f"{department.name} has no SLA for priority {ticket.priority}")
        remaining = timedelta(hours=hours)
        cursor = now.astimezone(UTC)
        for _ in range(366):  # a year of shifts is far beyond any SLA
            start = datetime.combine(cursor.date(), agent.shift_start, UTC)
            end = datetime.combine(cursor.date(), agent.shift_end, UTC)
            if cursor.weekday() in agent.weekdays and cursor < end:
                begin = max(cursor, start)
                if begin + remaining <= end:
                    return begin + remaining
                remaining -= end - begin
            cursor = datetime.combine(cursor.date() + timedelta(days=1), time(0), UTC)
        raise ValueError(f"agent {agent.agent_id} has no shift within a year")
