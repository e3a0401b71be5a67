"""The HTTP side of the serving process: what Prometheus, probes and people talk to.

:mod:`.server` binds the sockets and runs Tornado on its own thread; :mod:`.connections` holds
the rules every connection is read under (head deadlines and sizes, the connection cap);
:mod:`.handlers` answers ``/metrics``, ``/healthz``, ``/readyz`` and the landing page, whose HTML
is :mod:`.landing`; :mod:`.negotiation` picks the exposition format and encoding; basic-auth
logins are :mod:`.logins`; the web configuration file is :mod:`.web_config`, its TLS part
:mod:`.tls`, and the type checks of its values :mod:`.config_values`.
"""
