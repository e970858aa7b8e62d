"""Regulations: suppression and erasure of a data subject, audit, retention (doc/privacy.md).

Modules, by job: :mod:`.model` (pure: requests, ids, hashes, folding the
journal), :mod:`.journal` (the durable local log), :mod:`.suppression` (the
set of suppressed subjects and the delivery filter), :mod:`.erasure` (the
:class:`IErasable` interface destinations are adapted to), :mod:`.clickhouse`
(the SQL and the ClickHouse adapter), :mod:`.service` (filing, executing and
sharing regulations), :mod:`.retention` (dropping data older than a
destination's retention), :mod:`.api` (the interface the web layer talks to).
"""
