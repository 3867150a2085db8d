"""Detour: failover routing for AI coding tools, as a mitmproxy addon.

The package splits into a pure core (config model and loader, classifier, circuit breaker, router,
switch manager, state store) that never imports mitmproxy, and a thin shell (`shell`, `dispatch`,
`detour.py`) that adapts mitmproxy's hooks to it.
"""
