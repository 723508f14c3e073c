"""A kernel's variables kept across a pause: serialized with dill on pause, loaded again on resume.

The gateway sends this file's text to the kernel as silent code (no output, no history) and calls
one of its functions in the same request; ``last`` then holds the report, which the gateway reads
as the request's ``user_expressions`` (``application/json``). Nothing is left in the user's
namespace: the functions live in the module ``_code_gateway_state``, kept in ``sys.modules``.

- ``plan(budget)``: decides what is kept — every user variable (names not starting with ``_``,
  not IPython's own) that dill can serialize, up to ``budget`` bytes in all; modules are kept by
  name and imported again; the rest is reported ``lost`` with its type and why. Each variable is
  measured by serializing it into a counter, never into memory: a sandbox near its memory limit
  is not pushed over it by being paused.
- ``dump(fifo)``: writes what ``plan`` kept to ``fifo`` as one dill pickle (variables sharing an
  object still share it after the resume). Separate from ``plan`` so the bytes flow without a
  pause: the tool reading the FIFO never waits on the measuring.
- ``restore(fifo, state)`` (``fifo`` None: no variables were kept): re-imports the modules, loads the pickle into the namespace, and sets
  the kernel's execution count back to where it was.
"""

import importlib
import io
import socket
import sys
import threading
import types

#: Kinds of objects that hold something outside the process's memory: never kept (reported lost).
UNKEPT = (
    (io.IOBase, "an open file is not kept; open it again after the resume"),
    (socket.socket, "a socket is not kept: its connection ends with the pause"),
    (threading.Thread, "a thread does not survive the pause"),
    (types.GeneratorType, "a generator's position cannot be saved"),
    (types.CoroutineType, "a coroutine's position cannot be saved"),
    (types.AsyncGeneratorType, "an async generator's position cannot be saved"),
    (types.FrameType, "a stack frame cannot be saved"),
)
#: Longest reason text reported for a lost variable.
MAX_REASON = 300


class Report:
    """The outcome of ``save``/``restore``, displayed as ``application/json`` (what the gateway reads)."""

    def __init__(self, data):
        self.data = data

    def _repr_json_(self):
        return self.data


class Counter:
    """A write-only file that only counts: measures a pickle without holding it."""

    def __init__(self):
        self.size = 0

    def write(self, data):
        self.size += len(data)
        return len(data)


def type_name(value):
    kind = type(value)
    module = getattr(kind, "__module__", "builtins")
    return kind.__qualname__ if module == "builtins" else "%s.%s" % (module, kind.__qualname__)


def lost(name, value, reason):
    return {"name": name, "type": type_name(value), "reason": str(reason)[:MAX_REASON]}


def user_variables(shell):
    """(name, value) of what the user defined, in definition order."""
    hidden = shell.user_ns_hidden
    for name, value in list(shell.user_ns.items()):
        if name.startswith("_") or (name in hidden and hidden[name] is value):
            continue
        yield name, value


def plan(budget):
    """Decide what is kept: every variable measured, modules noted, the rest reported lost."""
    import dill
    from IPython import get_ipython

    shell = get_ipython()
    kept, modules, gone, room = {}, {}, [], budget
    for name, value in user_variables(shell):
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
            continue
        why = next((reason for kind, reason in UNKEPT if isinstance(value, kind)), None)
        if why is not None:
            gone.append(lost(name, value, why))
            continue
        counter = Counter()
        try:
            dill.dump(value, counter, recurse=True)
        except Exception as exc:  # noqa: BLE001 (any failure of any object's pickling means: not kept)
            gone.append(lost(name, value, "cannot be serialized: %s: %s" % (type(exc).__name__, exc)))
            continue
        if counter.size > room:
            gone.append(lost(name, value, "does not fit in the sandbox's disk_mb (%d bytes serialized)" % counter.size))
            continue
        room -= counter.size
        kept[name] = value
    module = sys.modules[__name__]
    module.kept = kept
    module.last = Report({"variables": list(kept), "modules": modules, "lost": gone,
                          "execution_count": shell.execution_count})


def dump(fifo):
    """Write what ``plan`` kept into ``fifo``, as one pickle (shared objects stay shared)."""
    import dill

    module = sys.modules[__name__]
    kept, module.kept = module.kept, {}
    gone = []
    with open(fifo, "wb") as out:
        try:
            dill.dump(kept, out, recurse=True)
        except Exception as exc:  # noqa: BLE001 (each one alone could be pickled; together they cannot)
            gone = [lost(name, value, "cannot be serialized with the others: %s" % exc) for name, value in kept.items()]
    module.last = Report({"lost": gone})


def restore(fifo, state):
    import dill
    from IPython import get_ipython

    shell = get_ipython()
    names, gone = [], []
    for name, module in state.get("modules", {}).items():
        try:
            shell.user_ns[name] = importlib.import_module(module)
            names.append(name)
        except Exception as exc:  # noqa: BLE001
            gone.append({"name": name, "type": "module", "reason": ("import %s failed: %s" % (module, exc))[:MAX_REASON]})
    try:
        values = {}
        if fifo is not None:
            with open(fifo, "rb") as source:
                values = dill.load(source)
    except Exception as exc:  # noqa: BLE001
        values = {}
        gone.extend({"name": name, "type": "unknown", "reason": ("could not be loaded: %s" % exc)[:MAX_REASON]}
                    for name in state.get("variables", []))
    shell.user_ns.update(values)
    names.extend(values)
    if state.get("execution_count"):
        shell.execution_count = state["execution_count"]
    sys.modules[__name__].last = Report({"variables": names, "lost": gone})


def _register():
    module = sys.modules.get(__name__)
    if module is None:
        module = sys.modules[__name__] = types.ModuleType(__name__)
    module.plan, module.dump, module.restore = plan, dump, restore
    for name in ("last", "kept"):  # (this file runs again with each call: keep what a plan left for dump)
        if not hasattr(module, name):
            setattr(module, name, None if name == "last" else {})


_register()
