"""Every way out of a program needs its `--allow-*` flag: a backend it names, imports outside
its folder, images, files, the web; scoped grants; the user's keys never go to a program's host."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from sgl_lang.cli import _split_scopes, main
from sgl_lang.errors import SglPermissionError
from sgl_lang.stdlib import permissions
from sgl_lang.stdlib.files import glob, read, write
from sgl_lang.stdlib.permissions import Permissions
from sgl_lang.stdlib.web import get

OPENAI_KEY, SGL_KEY = "sk-user-openai-secret", "user-sgl-secret"


class FakeServer:
    """An HTTP server on 127.0.0.1 recording each request's path and Authorization header;
    it answers 400 (no retry), or redirects to `redirect_to` when set."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.redirect_to: str | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                server.seen.append((self.path, self.headers.get("Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                if server.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"error": {"message": "refused by the fake"}}).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def keys(self) -> list[str | None]:
        return [auth for _, auth in self.seen]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    thread = threading.Thread(target=fake.httpd.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def sgl_run(program: Path, *flags: str) -> Result:
    """`sgl run` in this process, with the user's API keys in the environment."""
    keys = {"OPENAI_API_KEY": OPENAI_KEY, "SGL_API_KEY": SGL_KEY}
    return CliRunner().invoke(main, ["run", *flags, str(program)], env=keys)


def write_program(folder: Path, text: str, name: str = "main.sgl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- a program's backend


@pytest.mark.parametrize("form", ["openai:m@{url}/v1", "{url}"])
def test_a_backend_the_program_names_needs_allow_net(
    form: str, server: FakeServer, tmp_path: Path
) -> None:
    uri = form.format(url=server.url)
    program = write_program(tmp_path, f'backend "{uri}"\n"hi"\ngen x(max_tokens=3)\n')
    result = sgl_run(program)
    assert result.exit_code == 1
    assert f"{program}:1:1: permission error: the program's backend `{uri}`" in result.stderr
    assert f"sends prompts to `127.0.0.1:{server.port}`: that needs --allow-net" in result.stderr
    assert f"hint: give --allow-net=127.0.0.1:{server.port}" in result.stderr
    assert server.seen == []


@pytest.mark.parametrize("form", ["openai:m@{url}/v1", "{url}"])
def test_a_backend_the_program_names_gets_none_of_the_users_keys(
    form: str, server: FakeServer, tmp_path: Path
) -> None:
    program = write_program(
        tmp_path, f'backend "{form.format(url=server.url)}"\n"hi"\ngen x(max_tokens=3)\n'
    )
    result = sgl_run(program, "--allow-net")
    assert result.exit_code == 1  # the fake answers 400
    assert server.seen, "the program's backend was not reached"
    for key in server.keys:
        assert key is None or (OPENAI_KEY not in key and SGL_KEY not in key)


@pytest.mark.parametrize(("form", "key"), [("openai:m@{url}/v1", OPENAI_KEY), ("{url}", SGL_KEY)])
def test_a_backend_the_user_chooses_gets_the_users_key(
    form: str, key: str, server: FakeServer, tmp_path: Path
) -> None:
    program = write_program(tmp_path, '"hi"\ngen x(max_tokens=3)\n')
    result = sgl_run(program, "--backend", form.format(url=server.url))
    assert result.exit_code == 1
    assert server.keys and all(auth == f"Bearer {key}" for auth in server.keys)


def test_allow_net_scoped_to_hosts_and_ports(server: FakeServer, tmp_path: Path) -> None:
    program = write_program(tmp_path, f'backend "{server.url}"\n"hi"\ngen x(max_tokens=3)\n')
    for refused in ("--allow-net=example.com", f"--allow-net=127.0.0.1:{server.port + 1}"):
        result = sgl_run(program, refused)
        assert "permission error" in result.stderr and "granted only for" in result.stderr
    assert server.seen == []
    for granted in ("--allow-net=127.0.0.1", f"--allow-net=example.com,127.0.0.1:{server.port}"):
        result = sgl_run(program, granted)
        assert "permission error" not in result.stderr
    assert len(server.seen) >= 2


def test_a_model_file_the_program_names_outside_its_folder_needs_allow_read(
    tmp_path: Path,
) -> None:
    replies = tmp_path / "elsewhere" / "replies.json"
    replies.parent.mkdir()
    replies.write_text('["ok"]', encoding="utf-8")
    program = write_program(
        tmp_path / "prog", f'backend "test:{replies}"\n"hi"\ngen x(max_tokens=3)\nprint(x)\n'
    )
    refused = sgl_run(program)
    assert refused.exit_code == 1
    assert f"reads `{replies}`, outside the program's folder" in refused.stderr
    assert sgl_run(program, f"--allow-read={replies.parent}").stdout == "ok\n"


def test_the_local_backend_needs_no_flag(tmp_path: Path) -> None:
    program = write_program(tmp_path, 'backend "test"\n"hi"\ngen x(max_tokens=3)\nprint("ran")\n')
    assert sgl_run(program).stdout == "ran\n"


# ---------------------------------------------------------------- imports


SECRET = 'TOKEN = "s3cret"\n'


@pytest.mark.parametrize("spelling", ["../secret/env.sgl", "{secret}", "sub/../../secret/env.sgl"])
def test_an_import_outside_the_programs_folder_needs_allow_read(
    spelling: str, tmp_path: Path
) -> None:
    secret = write_program(tmp_path / "secret", SECRET, "env.sgl")
    program = write_program(
        tmp_path / "prog",
        f'import "{spelling.format(secret=secret)}" as env\nprint(env.TOKEN)\n',
    )
    (tmp_path / "prog" / "sub").mkdir()
    refused = sgl_run(program)
    assert refused.exit_code == 1 and "s3cret" not in refused.output
    assert f"{program}:1:1: permission error: `import" in refused.stderr
    assert f"reads `{secret}`, outside the program's folder" in refused.stderr
    assert "needs --allow-read" in refused.stderr
    assert sgl_run(program, "--allow-read").stdout == "s3cret\n"


def test_allow_read_scoped_to_a_folder_allows_only_inside_it(tmp_path: Path) -> None:
    write_program(tmp_path / "secret", SECRET, "env.sgl")
    write_program(tmp_path / "other", SECRET, "env.sgl")
    program = write_program(
        tmp_path / "prog",
        'import "../secret/env.sgl" as a\nimport "../other/env.sgl" as b\nprint(a.TOKEN)\n',
    )
    scoped = sgl_run(program, f"--allow-read={tmp_path / 'secret'}")
    assert scoped.exit_code == 1
    assert f"reads `{tmp_path / 'other' / 'env.sgl'}`" in scoped.stderr
    assert f"(granted only for {tmp_path / 'secret'})" in scoped.stderr
    both = f"--allow-read={tmp_path / 'secret'},{tmp_path / 'other'}"
    assert sgl_run(program, both).stdout == "s3cret\n"
    repeated = [f"--allow-read={tmp_path / 'secret'}", f"--allow-read={tmp_path / 'other'}"]
    assert sgl_run(program, *repeated).stdout == "s3cret\n"


def test_an_import_by_a_symlink_out_of_the_folder_needs_allow_read(tmp_path: Path) -> None:
    secret = write_program(tmp_path / "secret", SECRET, "env.sgl")
    (tmp_path / "prog").mkdir()
    (tmp_path / "prog" / "link.sgl").symlink_to(secret)
    program = write_program(tmp_path / "prog", 'import "link.sgl" as env\nprint(env.TOKEN)\n')
    assert "permission error" in sgl_run(program).stderr


def test_imports_inside_the_programs_folder_need_no_flag(tmp_path: Path) -> None:
    write_program(tmp_path / "prog" / "lib", SECRET, "env.sgl")
    program = write_program(tmp_path / "prog", 'import "lib/env.sgl" as env\nprint(env.TOKEN)\n')
    assert sgl_run(program).stdout == "s3cret\n"


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("source", ["~/x.png", "/etc/hostname", "pic.png"])
def test_an_image_path_needs_allow_read(source: str, tmp_path: Path) -> None:
    program = write_program(tmp_path, f'user:\n    image "{source}"\nprint("sent")\n')
    result = sgl_run(program, "--backend", "test")
    assert result.exit_code == 1 and result.stdout == ""
    assert f"{program}:2:5: permission error: reading `" in result.stderr
    assert "needs --allow-read" in result.stderr


def test_an_image_url_needs_allow_net_for_its_host(tmp_path: Path) -> None:
    program = write_program(tmp_path, 'user:\n    image "https://evil.example/x.png?d=1"\n')
    refused = sgl_run(program, "--backend", "test", "--allow-net=api.example")
    assert "connecting to `evil.example:443` needs --allow-net" in refused.stderr
    assert sgl_run(program, "--backend", "test", "--allow-net=evil.example").exit_code == 0


def test_an_image_inside_a_granted_folder_is_sent(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(b"\x89PNG")
    program = write_program(tmp_path, f'user:\n    image "{tmp_path / "pics" / "a.png"}"\n')
    assert sgl_run(program, "--backend", "test", f"--allow-read={tmp_path / 'pics'}").exit_code == 0


# ---------------------------------------------------------------- stdlib modules, scoped


@pytest.fixture
def grant() -> Iterator[Any]:
    tokens = []

    def set_(granted: Permissions) -> None:
        tokens.append(permissions.current.set(granted))

    yield set_
    for token in reversed(tokens):
        permissions.current.reset(token)


def test_files_scoped_to_a_folder(tmp_path: Path, grant: Any) -> None:
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir(), outside.mkdir()
    (inside / "a.txt").write_text("in")
    (outside / "b.txt").write_text("out")
    grant(Permissions(read=(inside,), write=(inside,)))
    assert read(str(inside / "a.txt")) == "in"
    with pytest.raises(SglPermissionError, match="granted only for"):
        read(str(outside / "b.txt"))
    with pytest.raises(SglPermissionError):
        read(str(inside / ".." / "out" / "b.txt"))
    assert glob(str(tmp_path / "*" / "*.txt")) == [str(inside / "a.txt")]
    write(str(inside / "c.txt"), "x")
    with pytest.raises(SglPermissionError, match="writing `"):
        write(str(outside / "c.txt"), "x")
    assert not (outside / "c.txt").exists()


def test_web_get_scoped_to_hosts_follows_no_redirect_elsewhere(
    server: FakeServer, grant: Any
) -> None:
    grant(Permissions(net=(f"127.0.0.1:{server.port}",)))
    with pytest.raises(SglPermissionError, match=r"connecting to `example\.com:80`"):
        asyncio.run(get("http://example.com/"))
    server.redirect_to = f"http://localhost:{server.port}/secret"
    with pytest.raises(SglPermissionError, match=f"connecting to `localhost:{server.port}`"):
        asyncio.run(get(f"{server.url}/start"))
    assert [path for path, _ in server.seen] == ["/start"]


# ---------------------------------------------------------------- the command line


def test_scoped_flags_are_split_but_bare_flags_stay_flags() -> None:
    args = ["--allow-read", "p.sgl", "--allow-net=a.com,b.com", "--", "--allow-read=x"]
    assert _split_scopes(args) == [
        "--allow-read",
        "p.sgl",
        "--allow-net-scope",
        "a.com,b.com",
        "--",
        "--allow-read=x",
    ]


def test_an_empty_scope_is_a_usage_error(tmp_path: Path) -> None:
    program = write_program(tmp_path, 'print("x")\n')
    result = sgl_run(program, "--allow-read=")
    assert result.exit_code == 2 and "empty place" in result.stderr


def test_help_says_allow_python_runs_arbitrary_code() -> None:
    for command in ("run", "repl"):
        text = " ".join(CliRunner().invoke(main, [command, "--help"]).stdout.split())
        assert (
            "--allow-python Let the program call Python functions. This runs arbitrary code" in text
        )


def test_net_scope_matches_hosts_and_default_ports() -> None:
    url = "https://api.openai.com/v1"
    assert Permissions(net=("api.openai.com",)).allows("net", url)
    assert Permissions(net=("API.openai.com:443",)).allows("net", url)
    assert not Permissions(net=("api.openai.com:80",)).allows("net", url)
    assert not Permissions(net=("openai.com",)).allows("net", url)
    assert not Permissions().allows("net", url) and Permissions(net=True).allows("net", url)
