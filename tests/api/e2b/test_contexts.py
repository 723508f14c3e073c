"""Code contexts through the real SDK: several kernels in one Docker sandbox, in every language.

``code-interpreter-v1`` sandboxes run ``code-gateway/full``: python, bash, R, JavaScript and
TypeScript (Deno). Each context is another kernel inside the same container: it shares the
sandbox's files and limits, runs as its user without capabilities or network, and never sees
the sandbox kernel's connection key.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2b import NotFoundException, SandboxException
from e2b_code_interpreter import AsyncSandbox, Sandbox

from tests.gateways import GatewayProcess

pytestmark = pytest.mark.docker

#: What each language's kernel processes have in their command lines (the bash kernel's: it and its bash).
KERNELS = {"bash": ("kernels/bash/kernel.py", "pexpect/bashrc.sh"), "r": ("IRkernel",),
           "javascript": ("deno jupyter",), "typescript": ("deno jupyter",)}


@pytest.fixture(scope="module")
def sandbox(e2b_gateway: GatewayProcess) -> Iterator[Sandbox]:
    created = Sandbox.create(timeout=600)  # code-interpreter-v1: the full image
    yield created
    created.kill()


@pytest.mark.parametrize(("language", "setup", "code", "expected"), [
    ("bash", "X=40", "echo $((X + 2))", "42\n"),
    ("r", "x <- c(40, 2)", "cat(sum(x))", "42"),
    ("javascript", "const x = [40, 2];", "console.log(x[0] + x[1])", "42\n"),
    ("typescript", "const x: number[] = [40, 2];", "console.log(x[0] + x[1])", "42\n"),
])
def test_a_context_in_each_language(sandbox: Sandbox, language: str, setup: str, code: str, expected: str) -> None:
    context = sandbox.create_code_context(language=language)
    assert (context.language, context.cwd) == (language, "/home/user")
    assert sandbox.run_code(setup, context=context).error is None
    ran = sandbox.run_code(code, context=context)  # state kept between runs of the context
    assert ran.error is None and "".join(ran.logs.stdout) == expected
    assert context.id in [c.id for c in sandbox.list_code_contexts()]
    assert all(any(mark in line for line in kernel_processes(sandbox, language)) for mark in KERNELS[language])
    sandbox.remove_code_context(context)  # (they share the sandbox's 512 MiB: one at a time here)
    # Its kernel is gone, with everything below it (Deno's relay and Deno, the bash kernel's bash).
    assert not kernel_processes(sandbox, language)


def kernel_processes(sandbox: Sandbox, language: str) -> list[str]:
    """The command lines in the sandbox of ``language``'s kernel processes."""
    processes = sandbox.commands.run("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done").stdout
    return [line for line in processes.splitlines() if any(mark in line for mark in KERNELS[language])]


def test_results_and_errors_of_other_languages(sandbox: Sandbox) -> None:
    r = sandbox.run_code("sum(1:3)", language="r")
    assert [res.text for res in r.results] == ["[1] 6"]
    js = sandbox.run_code("({a: 1, b: [2]})", language="js")
    assert js.results and js.results[0].is_main_result and js.results[0].text == "{ a: 1, b: [ 2 ] }"
    failed = sandbox.run_code("throw new Error('nope')", language="javascript")
    assert failed.error is not None and "nope" in failed.error.value
    assert sandbox.run_code("echo $RUN_ONLY", language="bash", envs={"RUN_ONLY": "yes"}).logs.stdout == ["yes\n"]
    assert sandbox.run_code("echo ${RUN_ONLY:-unset}", language="bash").logs.stdout == ["unset\n"]


@pytest.fixture
def own_sandbox(e2b_gateway: GatewayProcess) -> Iterator[Sandbox]:
    """A sandbox of the test's own: the module's may hold R, JavaScript and bash kernels already
    (the language contexts ``run_code(language=...)`` made stay), and they share its 512 MiB."""
    created = Sandbox.create(timeout=600)
    yield created
    created.kill()


def test_output_that_trails_the_idle_is_kept(own_sandbox: Sandbox) -> None:
    """Deno forwards console output from another task: in about one kernel in three it comes after
    the execution's idle, every time. Each execution still has its own, in fresh kernels."""
    sandbox = own_sandbox
    for attempt in range(4):
        context = sandbox.create_code_context(language="javascript")
        try:
            for n in range(2):
                ran = sandbox.run_code(f"console.log('{attempt}.{n}')", context=context)
                assert ran.logs.stdout == [f"{attempt}.{n}\n"], ran
        finally:
            sandbox.remove_code_context(context)


def test_contexts_share_files_not_privileges(sandbox: Sandbox) -> None:
    sandbox.run_code("open('from-python.txt', 'w').write('py')")
    shared = sandbox.run_code("cat from-python.txt; echo; id -u; grep CapEff /proc/self/status; "
                              "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; "
                              "echo ${CODE_GATEWAY_CONNECTION:-no key}", language="bash")
    out = "".join(shared.logs.stdout).split("\n")
    assert out[0] == "py" and out[1] == "1000"
    assert out[2].split() == ["CapEff:", "0000000000000000"]
    assert out[3:-2] == ["lo"] and out[-2] == "no key"  # loopback only: no network
    assert sandbox.files.read("from-python.txt") == "py"


def test_restart_remove_and_unknown(sandbox: Sandbox) -> None:
    context = sandbox.create_code_context(language="python", cwd="/home/user")
    sandbox.run_code("kept = 1", context=context)
    sandbox.restart_code_context(context)
    assert sandbox.run_code("kept", context=context).error.name == "NameError"  # type: ignore[union-attr]
    sandbox.remove_code_context(context.id)
    assert context.id not in [c.id for c in sandbox.list_code_contexts()]
    with pytest.raises(NotFoundException, match=f"Context {context.id} not found"):
        sandbox.run_code("1", context=context)
    with pytest.raises(SandboxException, match="unknown language 'cobol'"):
        sandbox.create_code_context(language="cobol")


def test_our_api_sees_the_contexts(sandbox: Sandbox, ours: httpx.Client) -> None:
    context = sandbox.create_code_context(language="bash")
    listed = ours.get(f"/api/v1/sandboxes/{sandbox.sandbox_id}/contexts").json()["contexts"]
    assert {"id": context.id, "language": "bash"}.items() <= next(c for c in listed if c["id"] == context.id).items()
    ran = ours.post(f"/api/v1/sandboxes/{sandbox.sandbox_id}/execute", json={"code": "echo ours", "context": context.id})
    assert ran.json()["stdout"] == "ours\n"


async def test_async_contexts(async_sandbox: AsyncSandbox) -> None:
    context = await async_sandbox.create_code_context(language="typescript")
    ran = await async_sandbox.run_code("const n: number = 6 * 7; console.log(n)", context=context)
    assert ran.logs.stdout == ["42\n"], ran
    assert len(await async_sandbox.list_code_contexts()) == 2
    await async_sandbox.remove_code_context(context)


def test_a_context_shares_the_sandbox_memory_limit(sandbox: Sandbox, ours: httpx.Client) -> None:
    """A context that takes more than the sandbox's 512 MiB is killed for it; the sandbox goes on."""
    context = sandbox.create_code_context(language="python")
    ran = ours.post(f"/api/v1/sandboxes/{sandbox.sandbox_id}/execute",
                    json={"code": "hog = bytearray(700 << 20)", "context": context.id}).json()
    assert (ran["status"], ran["error"]["code"]) == ("failed", "out_of_memory")
    assert sandbox.run_code("'still here'").text == "still here"
    listed = ours.get(f"/api/v1/sandboxes/{sandbox.sandbox_id}/contexts").json()["contexts"]
    assert next(c for c in listed if c["id"] == context.id)["status_reason"] == "out_of_memory"
    sandbox.restart_code_context(context)  # a dead context comes back with a restart
    assert sandbox.run_code("1 + 1", context=context).text == "2"
    sandbox.remove_code_context(context)


def test_a_language_the_image_lacks_is_refused(e2b_gateway: GatewayProcess) -> None:
    plain = Sandbox.create(template="base", timeout=120)  # the python image
    try:
        with pytest.raises(SandboxException, match="409 Conflict: this sandbox's image has no bash kernel"):
            plain.run_code("echo hi", language="bash")
        assert plain.run_code("'python works'").text == "python works"
    finally:
        plain.kill()
