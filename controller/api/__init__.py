"""KServe's LocalModel API as data: resource kinds, naming rules, node matching, status enums.

Everything here is pure (no I/O) so that the manager and the agent share one definition of each
name and rule; see `kinds`, `naming`, `nodes` and `status`.
"""
