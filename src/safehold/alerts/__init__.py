"""Alerts: every HA event goes to the configured channels (email, syslog, SNMP trap, webhook) and
the operator's event script.

- :mod:`.settings` — the cluster's alert settings and how they change (the ``[alerts]`` section
  models it re-exports live in :mod:`safehold.alerts_config`, which ``safehold.config`` imports);
- :mod:`.events` — :class:`~.events.AlertEvent`, one event as the channels see it;
- one module per channel: :mod:`.email`, :mod:`.syslog`, :mod:`.snmp`, :mod:`.webhook`, :mod:`.script`;
- :mod:`.dispatch` — :class:`~.dispatch.Dispatcher` (queues and delivery threads) and
  :func:`~.dispatch.send_test`;
- :mod:`.relay` — :func:`~.relay.relay_once`, from the ``ha_events`` log to the dispatcher.
"""
