"""The admin API and web console: a child process of the master (like the metrics exporter)
serving JSON under ``/api/v1/`` and a static console at ``/`` on ``admin_port``.

It reads and changes the server through the shared state file only (``server.scoreboard``):
the session table and its kick requests, the ban table, the reload requests the master runs.
It never loads pyftpdlib or the COS SDK. Modules, one job each: ``process`` (the child's
main), ``handler`` (HTTP), ``app`` (routing, tokens, CSRF checks, the audit log), ``auth``
(token checks), ``tls`` (the server's certificate for HTTPS), the resources (``status``,
``sessions``, ``bans``, ``accounts``, ``events``, ``reload``), ``openapi`` (the document)
and ``console/`` (HTML, JS and CSS, package data).
"""
