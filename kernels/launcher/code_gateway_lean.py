"""ipykernel without what an idle sandbox kernel never uses: each part is imported on first use instead.

    import code_gateway_lean
    code_gateway_lean.kernel_app_class().launch_instance()   # ipykernel.kernelapp.IPKernelApp

An idle kernel of the image's ipykernel 6.17 / IPython 8.5 holds about 52 MiB and imports about
960 modules; half of that memory is modules it needs only on request. Imported through here
(about 470 modules, 26 MiB) the same kernel leaves out until used:

- IPython's terminal front end (``IPython.terminal``, prompt_toolkit): ``IPython/__init__``
  imports it only to offer ``IPython.embed``, which a kernel never runs. ``IPython.embed`` stays,
  imported on first access (a module ``__getattr__``).
- jedi and parso: ``IPython.core.completer`` imports jedi as it is imported. Here it gets a
  stand-in that imports jedi, set up as IPython sets it up, on the first completion;
  ``IPCompleter.use_jedi`` keeps its default (on when jedi is installed): completion is as before.
- The modules of ``ON_FIRST_USE``: tracebacks' ``stack_data`` and ``pydoc``, shell commands'
  ``pexpect``, ``obj?``'s lexer, ``%load``'s urllib, the kernel's ``psutil`` (usage, children).
- debugpy (with pydevd and pkg_resources, 11 MiB): the kernel starts as on an image without
  debugpy, its debugger off. The kernelspec (kernels/python3/kernel.json) always said
  ``"debugger": false``, so no front end offers it, and nothing of the gateway uses it; a
  ``debug_request`` gets an empty reply. User code may still ``import debugpy``.

Each step checks that the module it adjusts looks as expected and otherwise leaves it as IPython
made it: another IPython or ipykernel still starts, only without some of the savings.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from importlib.machinery import ModuleSpec
    from typing import Any

#: Imported by the kernel at start, used only on request, but looked into as they are imported:
#: absent from ``sys.modules`` while ipykernel is imported (``None`` there makes ``import`` fail as
#: if not installed). jedi then gets a stand-in (``_defer_jedi``); the debugger stays off.
ABSENT = ("debugpy", "jedi")

#: Imported by the kernel at start but used only on request (for an error's traceback, a shell
#: command, ``obj?``, ``%load`` of a URL): a stand-in module (``_StandIn``) takes their place in
#: the modules that import them, and imports the real one when first used. The names listed are
#: those imported from them by name (``from m import name``); each is only ever called.
ON_FIRST_USE: dict[str, tuple[str, ...]] = {
    "stack_data": (),  # IPython.core.ultratb
    "pydoc": (),  # IPython.core.ultratb
    "pexpect": (),  # IPython.utils._process_posix
    "urllib.request": ("Request", "urlopen"),  # IPython.core.magics.code
    "pygments.lexers": ("PythonLexer",),  # IPython.core.oinspect
    "psutil": ("Process",),  # ipykernel.kernelbase
}


def kernel_app_class() -> Any:
    """``ipykernel.kernelapp.IPKernelApp``, imported without what an idle kernel does not use."""
    if "ipykernel.kernelapp" in sys.modules:  # too late to leave anything out
        return sys.modules["ipykernel.kernelapp"].IPKernelApp
    absent = [name for name in ABSENT if name not in sys.modules]
    stand_ins = {}
    for name, callables in ON_FIRST_USE.items():
        spec = None if name in sys.modules else importlib.util.find_spec(name)
        if spec is not None:
            stand_ins[name] = _StandIn(spec, callables)
    sys.modules.update(dict.fromkeys(absent))  # type: ignore[arg-type]
    sys.modules.update(stand_ins)
    try:
        _import_ipython_without_terminal()
        from ipykernel import kernelapp
    finally:
        for name in absent:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
    _defer_jedi()
    return kernelapp.IPKernelApp


def _import_ipython_without_terminal() -> None:
    """``import IPython`` with ``IPython.embed`` loaded on first access instead of at import."""
    if "IPython" in sys.modules:
        return
    name = "IPython.terminal.embed"
    stand_in = types.ModuleType(name)

    def embed(**kwargs: Any) -> None:  # only ever seen by IPython/__init__'s import
        raise RuntimeError("code_gateway_lean's stand-in for IPython.embed was called")

    stand_in.embed = embed  # type: ignore[attr-defined]
    sys.modules[name] = stand_in
    try:
        import IPython
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
    terminal = sys.modules.get("IPython.terminal")
    if terminal is not None and terminal.__dict__.get("embed") is stand_in:
        del terminal.embed
    if IPython.__dict__.get("embed") is not embed:
        return
    del IPython.embed

    def __getattr__(attr: str) -> Any:  # PEP 562: only for names the module does not have
        if attr == "embed":
            from IPython.terminal.embed import embed as real

            IPython.embed = real
            return real
        raise AttributeError(f"module 'IPython' has no attribute {attr!r}")

    IPython.__getattr__ = __getattr__


class _StandIn(types.ModuleType):
    """Stands for module ``name`` where it was imported, until first used: then imports it and steps aside.

    Made from the module's spec (``importlib.util.find_spec``). Any attribute it does not have
    imports the real module (then calls ``set_up`` with it, once),
    puts it in every module's globals where the stand-in was, and answers from it. ``callables``
    are attributes it has: functions that do the same, then call the real module's function of
    that name. Dunder names are not looked up in the real module (the import system asks for
    ``__path__`` and others); a package's stand-in has its real ``__path__``, so its submodules
    import as usual.
    """

    def __init__(self, spec: ModuleSpec, callables: tuple[str, ...] = (),
                 set_up: Callable[[types.ModuleType], None] | None = None) -> None:
        super().__init__(spec.name)
        if spec.submodule_search_locations is not None:
            self.__path__ = list(spec.submodule_search_locations)
        self._callables = {attr: self._deferred(attr) for attr in callables}
        self._set_up = set_up
        self.__dict__.update(self._callables)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(f"module {self.__name__!r} (not imported yet) has no attribute {attr!r}")
        return getattr(self._load(), attr)

    def _deferred(self, attr: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return getattr(self._load(), attr)(*args, **kwargs)

        call.__name__ = call.__qualname__ = attr
        return call

    def _load(self) -> types.ModuleType:
        name = self.__name__
        if sys.modules.get(name) is self:  # first used while ipykernel is being imported
            del sys.modules[name]
        real = importlib.import_module(name)
        set_up, self._set_up = self._set_up, None
        if set_up is not None:
            set_up(real)
        # Our objects are alive (held here), so an object with one of these ids is one of them.
        replacements = {id(function): getattr(real, attr) for attr, function in self._callables.items()}
        replacements[id(self)] = real
        for module in list(sys.modules.values()):
            try:  # (not getattr: a lazy module would load on it)
                namespace = object.__getattribute__(module, "__dict__")
            except AttributeError:
                continue
            for key, value in list(namespace.items()):
                replacement = replacements.get(id(value))
                if replacement is not None:
                    namespace[key] = replacement
        return real


def _set_up_jedi(jedi: types.ModuleType) -> None:
    """What ``IPython.core.completer`` does when it imports jedi itself."""
    jedi.settings.case_insensitive_completion = False
    importlib.import_module("jedi.api.helpers")
    importlib.import_module("jedi.api.classes")


def _defer_jedi() -> None:
    """Give ``IPython.core.completer`` a stand-in for jedi, with jedi completion on by default as usual."""
    completer = sys.modules.get("IPython.core.completer")
    if completer is None or completer.__dict__.get("JEDI_INSTALLED", True) or "jedi" in completer.__dict__:
        return  # imported with jedi (or without it for another reason): nothing to do
    spec = importlib.util.find_spec("jedi")
    if spec is None:
        return  # really not installed
    trait = completer.IPCompleter.class_traits().get("use_jedi")
    if trait is None:
        return
    completer.jedi = _StandIn(spec, set_up=_set_up_jedi)  # type: ignore[attr-defined]
    completer.JEDI_INSTALLED = True  # type: ignore[attr-defined]
    trait.default_value = True
