"""The standard library: the always-in-scope built-ins and the importable modules."""

BUILTIN_NAMES: frozenset[str] = frozenset(
    "len range str int float bool list dict min max sum abs round sorted reversed enumerate "
    "zip any all print json_dumps json_loads run_batch meta tool".split()
)
"""Names always in scope (docs/language.md, "The standard library")."""

MODULE_NAMES: frozenset[str] = frozenset("re text math calc web files retrieval python".split())
"""Standard-library modules importable by name (`import web`)."""
