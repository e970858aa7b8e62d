"""The HTTP surface: routes, limits while reading, auth, CORS, answers.

It knows nothing of ClickHouse: accepted events go to an intake (the
forwarder) through :class:`stilgar.web.app.IIntake`.
"""
