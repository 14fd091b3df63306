"""Code versions: normalized source plus transitive helpers, constants and libraries."""

from __future__ import annotations

import functools
import gc
import importlib
import linecache
import subprocess
import sys
import textwrap
import types
import uuid
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from provstore.codeversion import CodeVersion, Fingerprinter, code_version, function_identity

Loader = Callable[..., dict[str, types.ModuleType]]


@pytest.fixture
def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loader]:
    """Write modules to tmp_path and import them freshly (same names on every call).

    Module names get a per-test suffix; sources refer to it as ``{u}``.
    """
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no stale .pyc between rewrites
    monkeypatch.syspath_prepend(str(tmp_path))
    suffix = uuid.uuid4().hex[:10]
    names: set[str] = set()

    def _load(**sources: str) -> dict[str, types.ModuleType]:
        for name, src in sources.items():
            path = tmp_path / f"{name}_{suffix}.py"
            path.write_text(textwrap.dedent(src.replace("{u}", suffix)))
            linecache.cache.pop(str(path), None)  # same size + same mtime would look unchanged
            names.add(f"{name}_{suffix}")
            sys.modules.pop(f"{name}_{suffix}", None)
        importlib.invalidate_caches()
        return {name: importlib.import_module(f"{name}_{suffix}") for name in sources}

    yield _load
    for name in names:
        sys.modules.pop(name, None)


def _digest(load: Loader, src: str, name: str = "f", **others: str) -> str:
    return code_version(getattr(load(m=src, **others)["m"], name)).digest


BASE = """
SCALE = 2

def helper(x):
    return x * SCALE

def f(x):
    return helper(x) + 1

def unrelated():
    return 0
"""


def test_code_version_fields(load: Loader) -> None:
    mod = load(m=BASE)["m"]
    cv = code_version(mod.f)
    assert isinstance(cv, CodeVersion)
    assert cv.identity == function_identity(mod.f) == f"{mod.__name__}:f"
    assert len(cv.digest) == 32
    assert cv.source == "def f(x):\n    return helper(x) + 1"
    assert cv.pinned is None
    assert cv.deps[f"{mod.__name__}:helper"]
    assert f"{mod.__name__}.SCALE" in cv.deps
    assert f"{mod.__name__}:unrelated" not in cv.deps
    assert code_version(mod.f) == cv


def test_main_identity_has_no_path() -> None:
    ns: dict[str, object] = {"__name__": "__main__"}
    exec("def g():\n    return 1\n", ns)
    assert function_identity(ns["g"]) == "__main__:g"


@pytest.mark.parametrize(
    "edited",
    [
        BASE.replace("return helper(x) + 1", "return helper(x) + 1  # add one"),
        BASE.replace("def f(x):\n", 'def f(x):\n    """Add one."""\n'),
        BASE.replace(
            "def f(x):\n    return helper(x) + 1",
            "def f(x):\n\n\n    return (helper(\n        x) + 1)",
        ),
        BASE.replace("def unrelated():\n    return 0", "") + "\ndef unrelated():\n    return 0\n",
        "def f(x):\n    return helper(x) + 1\n"
        + BASE.replace("def f(x):\n    return helper(x) + 1", ""),
        BASE.replace("return 0", "return 42"),
        BASE.replace("def helper(x):\n", "def helper(x):\n    'doc'\n    # note\n"),
    ],
    ids=[
        "comment",
        "docstring",
        "reformat",
        "move-unrelated",
        "move-f",
        "unrelated-edit",
        "helper-doc",
    ],
)
def test_cosmetic_edits_keep_the_digest(load: Loader, edited: str) -> None:
    assert _digest(load, BASE) == _digest(load, edited)


@pytest.mark.parametrize(
    "edited",
    [
        BASE.replace("return helper(x) + 1", "return helper(x) + 2"),
        BASE.replace("return x * SCALE", "return x * SCALE * 1"),
        BASE.replace("SCALE = 2", "SCALE = 3"),
        BASE.replace("SCALE = 2", "SCALE = 2.0"),
    ],
    ids=["body", "helper", "constant-read-by-helper", "constant-type"],
)
def test_real_edits_change_the_digest(load: Loader, edited: str) -> None:
    assert _digest(load, BASE) != _digest(load, edited)


def test_helper_of_helper_and_constant_read_directly(load: Loader) -> None:
    src = """
    import numpy as np
    K = {k}
    F = np.float32({k})
    PARAMS = {{"a": {a}}}
    def inner(x):
        return x - PARAMS["a"]
    def middle(x):
        return inner(x) * 2
    def f(x):
        return middle(x) + K + F
    """
    base = _digest(load, src.format(k=1, a=1))
    assert _digest(load, src.format(k=1, a=1)) == base
    assert _digest(load, src.format(k=2, a=1)) != base
    assert _digest(load, src.format(k=1, a=2)) != base
    assert _digest(load, src.format(k=1, a=1).replace("* 2", "* 3")) != base
    assert _digest(load, src.format(k=1, a=1).replace("x - P", "x + P")) != base


@pytest.mark.parametrize("style", ["import", "from"])
def test_helper_in_another_user_module(load: Loader, style: str) -> None:
    user = (
        "import helpers_{u} as helpers\ndef f(x):\n    return helpers.g(x)\n"
        if style == "import"
        else "from helpers_{u} import g\ndef f(x):\n    return g(x)\n"
    )
    helpers = "OFFSET = {o}\ndef g(x):\n    return x + {c} + OFFSET\n"
    base = _digest(load, user, helpers=helpers.format(o=0, c=1))
    assert _digest(load, user, helpers=helpers.format(o=0, c=1)) == base
    assert _digest(load, user, helpers=helpers.format(o=0, c=2)) != base
    assert _digest(load, user, helpers=helpers.format(o=5, c=1)) != base


def test_recursion_terminates_and_is_deterministic(load: Loader) -> None:
    mod = load(
        m="""
        def even(n):
            return n == 0 or odd(n - 1)
        def odd(n):
            return n != 0 and even(n - 1)
        def fact(n):
            return 1 if n <= 1 else n * fact(n - 1)
        """
    )["m"]
    cv = code_version(mod.even)
    assert f"{mod.__name__}:odd" in cv.deps
    assert f"{mod.__name__}:even" not in cv.deps
    assert code_version(mod.even) == cv
    assert code_version(mod.fact).deps == {}
    assert code_version(mod.fact) == code_version(mod.fact)


def test_closure_constants(load: Loader) -> None:
    mod = load(
        m="""
        def make(k):
            def inner(x):
                return x * k
            return inner
        """
    )["m"]
    assert code_version(mod.make(2)) == code_version(mod.make(2))
    assert code_version(mod.make(2)).digest != code_version(mod.make(3)).digest


def test_class_used_inside(load: Loader) -> None:
    src = """
    class Scaler:
        '''Scales.'''
        def __init__(self, k):
            self.k = k
        def apply(self, x):
            return x * self.k + {c}
    def f(x):
        return Scaler(2).apply(x)
    """
    base = _digest(load, src.format(c=0))
    assert _digest(load, src.format(c=0).replace("'''Scales.'''", "'''Other.'''")) == base
    assert _digest(load, src.format(c=1)) != base


def test_class_method_references_are_followed(load: Loader) -> None:
    src = """
    def tool(x):
        return x + {c}
    class Model:
        def run(self, x):
            return tool(x)
    def f(x):
        return Model().run(x)
    """
    assert _digest(load, src.format(c=1)) != _digest(load, src.format(c=2))


def test_library_functions_record_distribution(
    load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = load(
        m="""
        import math
        import numpy as np
        from numpy import median
        def f(x):
            return np.mean(x) + median(x) + math.sqrt(2)
        """
    )["m"]
    cv = code_version(mod.f)
    assert cv.deps["dist:numpy"] == np.__version__
    assert cv.deps["dist:python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert not any(k.startswith("numpy") for k in cv.deps)
    monkeypatch.setattr(np, "mean", np.average)  # library internals do not count
    assert code_version(mod.f) == cv


def test_provstore_internals_are_library(load: Loader) -> None:
    mod = load(m="from provstore.hashing import digest\ndef f(x):\n    return digest(x)\n")["m"]
    assert list(code_version(mod.f).deps) == ["dist:provstore"]


def test_version_pin(load: Loader) -> None:
    src = "def f(x):\n    return x + {c}\n"
    one = code_version(load(m=src.format(c=1))["m"].f, version="2")
    two = code_version(load(m=src.format(c=2))["m"].f, version="2")
    assert one.digest == two.digest
    assert one.pinned == "2"
    assert "x + 2" in two.source
    assert code_version(load(m=src.format(c=2))["m"].f, version="3").digest != two.digest
    assert code_version(load(m=src.format(c=2))["m"].f).digest != two.digest


def test_decorators_of_the_top_function_do_not_count(load: Loader) -> None:
    plain = "def f(x):\n    return x + 1\n"
    decorated = "import functools\n@functools.lru_cache\ndef f(x):\n    return x + 1\n"
    assert _digest(load, plain) == _digest(load, decorated)

    mod = load(m=plain)["m"]

    class Tracked:  # a provstore-style wrapper object
        def __init__(self, fn: Callable[[int], int]) -> None:
            self.__wrapped__ = fn

    assert code_version(Tracked(mod.f)) == code_version(mod.f)
    assert code_version(functools.wraps(mod.f)(lambda x: mod.f(x))) == code_version(mod.f)


def test_tracked_wrapper_helper_is_followed(load: Loader) -> None:
    src = """
    import functools
    def g(x):
        return x + {c}
    wrapped = functools.lru_cache(g)
    def f(x):
        return wrapped(x)
    """
    assert _digest(load, src.format(c=1)) != _digest(load, src.format(c=2))


def test_global_state_written_by_the_function_is_not_a_constant(load: Loader) -> None:
    mod = load(m="CALLS = 0\ndef f():\n    global CALLS\n    CALLS += 1\n")["m"]
    before = code_version(mod.f)
    mod.f()
    assert code_version(mod.f) == before


def test_lambdas_and_exec_fall_back_to_code_objects(load: Loader) -> None:
    mod = load(m="K = 3\nsq = lambda x: x * K\nalso = lambda x: x * K + 1\n")["m"]
    cv = code_version(mod.sq)
    assert cv == code_version(mod.sq)
    assert cv.digest != code_version(mod.also).digest
    assert f"{mod.__name__}.K" in cv.deps
    assert "lambda" in cv.source

    def compiled(body: str) -> CodeVersion:
        ns: dict[str, object] = {"__name__": "generated"}
        exec(compile(f"def h(x):\n    return {body}\n", "<generated>", "exec"), ns)
        return code_version(ns["h"])

    assert compiled("x + 1") == compiled("x + 1")
    assert compiled("x + 1").digest != compiled("x + 2").digest
    assert "unavailable" in compiled("x + 1").source


def test_same_digest_in_other_processes(load: Loader, tmp_path: Path) -> None:
    mod = load(m=BASE)["m"]
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import importlib\n"
        "from provstore.codeversion import code_version\n"
        "print(code_version(importlib.import_module(sys.argv[2]).f).digest)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-B", "-c", script, str(tmp_path), mod.__name__],
            stdout=subprocess.PIPE,
            text=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        )
        for seed in ("1", "2")
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outputs == [code_version(mod.f).digest] * 2


def test_fingerprinter_caches_and_sees_rebinding(load: Loader) -> None:
    mod = load(m=BASE + 'PARAMS = {"a": 1}\ndef p(x):\n    return x * PARAMS["a"]\n')["m"]
    fp = Fingerprinter()
    first = fp.current(mod.f)
    assert fp.current(mod.f) is first
    assert first == code_version(mod.f)

    ns: dict[str, object] = {}
    exec("def helper(x):\n    return x * 100\n", ns)
    mod.helper = ns["helper"]  # a notebook cell redefining the helper
    second = fp.current(mod.f)
    assert second.digest != first.digest
    assert fp.current(mod.f) is second

    mod.SCALE = 5  # constants are rechecked too... but f no longer reads SCALE
    assert fp.current(mod.f) is second

    before = fp.current(mod.p)
    mod.PARAMS["a"] = 2  # mutated in place: the process keeps the first value
    assert fp.current(mod.p) is before
    mod.PARAMS = {"a": 2}  # rebound: a new version
    assert fp.current(mod.p).digest != before.digest
    assert code_version(mod.p).digest == fp.current(mod.p).digest
    assert fp.current(mod.p, version="1").pinned == "1"


def test_a_function_appending_to_a_module_list_keeps_its_version(load: Loader) -> None:
    mod = load(m=BASE + "LOG = []\ndef logged(x):\n    LOG.append(x)\n    return x\n")["m"]
    fp = Fingerprinter()
    first = fp.current(mod.logged)
    for i in range(3):
        mod.logged(i)
        assert fp.current(mod.logged) is first


def test_fingerprinter_on_notebook_cells() -> None:
    """Cells compile from pseudo-files registered in linecache, as IPython does."""
    ns: dict[str, object] = {"__name__": "__main__"}
    cells = []

    def run_cell(src: str) -> None:
        name = f"<ipython-input-{uuid.uuid4().hex}>"
        lines = src.splitlines(keepends=True)
        linecache.cache[name] = (len(src), None, lines, name)
        cells.append(name)
        exec(compile(src, name, "exec"), ns)

    try:
        run_cell(
            "def helper(x):\n    return x + 1\n\ndef f(x):\n    # cell one\n    return helper(x)\n"
        )
        fp = Fingerprinter()
        f = ns["f"]
        first = fp.current(f)
        assert first.identity == "__main__:f"
        assert first.source == "def f(x):\n    return helper(x)"
        assert fp.current(f) is first
        run_cell("def helper(x):\n    return x + 2\n")
        assert fp.current(f).digest != first.digest
        run_cell("def helper(x):\n    # only a comment differs\n    return x + 1\n")
        assert fp.current(f).digest == first.digest
        run_cell("def f(x):\n    return helper(x)\n")  # redefined f, same code
        assert fp.current(ns["f"]).digest == first.digest
    finally:
        for name in cells:
            linecache.cache.pop(name, None)


def test_fingerprinter_sees_module_reload(load: Loader, tmp_path: Path) -> None:
    mods = load(
        m="import helpers_{u} as helpers\ndef f(x):\n    return helpers.g(x)\n",
        helpers="def g(x):\n    return x\n",
    )
    fp = Fingerprinter()
    first = fp.current(mods["m"].f)
    path = Path(mods["helpers"].__file__ or "")
    path.write_text("def g(x):\n    return -x\n")
    importlib.invalidate_caches()
    importlib.reload(mods["helpers"])
    assert fp.current(mods["m"].f).digest != first.digest


def test_tracked_method_depends_on_its_class(load: Loader) -> None:
    src = """
    class Model:
        def run(self, x):
            return self.step(x)
        def step(self, x):
            return x + {c}
    """
    one = code_version(load(m=src.replace("{c}", "1"))["m"].Model.run)
    assert one.identity.endswith(":Model.run")
    assert one == code_version(load(m=src.replace("{c}", "1"))["m"].Model.run)
    assert one.digest != code_version(load(m=src.replace("{c}", "2"))["m"].Model.run).digest


def test_partials_static_methods_properties_and_async(load: Loader) -> None:
    src = """
    import functools
    def g(x, k):
        return x * k + {c}
    scaled = functools.partial(g, k=2)
    class Box:
        @staticmethod
        def make(x):
            return scaled(x)
        @property
        def size(self):
            return 1
    async def f(x):
        return Box.make(x) + Box().size
    """
    base = _digest(load, src.replace("{c}", "0"))
    assert _digest(load, src.replace("{c}", "0")) == base
    assert _digest(load, src.replace("{c}", "1")) != base
    assert _digest(load, src.replace("{c}", "0").replace("k=2", "k=3")) != base
    assert _digest(load, src.replace("{c}", "0").replace("return 1", "return 2")) != base


def test_odd_globals_do_not_break_the_walk(load: Loader) -> None:
    mod = load(
        m="""
        import numpy as np
        class Anything:
            def __getattr__(self, name):
                return Anything()
        class Broken:
            def __getattr__(self, name):
                raise RuntimeError(name)
        proxy, broken, big, arr = Anything(), Broken(), list(range(100_000)), np.zeros(3)
        def f():
            return proxy, broken, big, arr, print
        """
    )["m"]
    cv = code_version(mod.f)
    assert f"{mod.__name__}.big" not in cv.deps  # large containers are not "simple"
    assert cv == code_version(mod.f)
    fp = Fingerprinter()
    assert fp.current(mod.f) is fp.current(mod.f)


def test_fingerprinter_is_thread_safe(load: Loader) -> None:
    mod = load(m=BASE)["m"]
    fp = Fingerprinter()
    expected = code_version(mod.f)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: fp.current(mod.f), range(200)))
    assert all(r == expected for r in results)


def test_fingerprinter_does_not_keep_redefined_functions_alive() -> None:
    ns: dict[str, object] = {"__name__": "__main__"}
    exec("def helper(x):\n    return x\ndef f(x):\n    return f(helper(x))\n", ns)
    fp = Fingerprinter()
    first = fp.current(ns["f"])
    assert fp.current(ns["f"]) is first  # self-recursion checks resolve to the function itself
    ref = weakref.ref(ns["f"])
    exec("def f(x):\n    return x\n", ns)  # a notebook redefining f
    gc.collect()
    assert ref() is None


def test_library_upgrades_do_not_change_user_code_versions(
    load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from provstore import codeversion

    mod = load(m=BASE + "import numpy as np\ndef uses_numpy(x):\n    return np.mean(x)\n")["m"]
    user_before = code_version(mod.uses_numpy)
    library_before = code_version(np.convolve)
    assert user_before.deps["dist:numpy"] == np.__version__  # recorded, for history
    assert "numpy==" in library_before.source
    real = codeversion.distribution_of
    monkeypatch.setattr(codeversion, "distribution_of",
                        lambda name: ("numpy", "99.0") if real(name) else None)
    assert code_version(mod.uses_numpy).digest == user_before.digest
    assert code_version(mod.uses_numpy).deps["dist:numpy"] == "99.0"
    assert code_version(np.convolve).digest != library_before.digest  # name==version


def test_every_helper_is_read_with_its_own_names(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The walk cached each parsed definition's names by id(); once a tree was
    # freed, the next helper's tree could reuse its id and be read with the
    # names of the function before it, dropping the constant the helper reads
    # from the key (seen on 1 to 15 of 100 fresh imports, depending on the
    # Python). Many fresh modules make an id reuse near certain.
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    src = textwrap.dedent("""
        import functools

        LEVELS = (1, 2.5, -3, "a", None, {"k": [1, 2]})
        FACTOR = 2


        class Scaler:
            def __init__(self, by):
                self.by = by

            def apply(self, x):
                return x * self.by


        @functools.lru_cache(maxsize=None)
        def base(n):
            return n + len(LEVELS)


        def top(x):
            return Scaler(FACTOR).apply(x) + base(1)
        """)
    missed = []
    for i in range(200):
        name = f"walk_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(src)
        importlib.invalidate_caches()
        try:
            deps = code_version(importlib.import_module(name).top).deps
        finally:
            sys.modules.pop(name, None)
        if f"{name}.LEVELS" not in deps:
            missed.append(i)
    assert missed == []
