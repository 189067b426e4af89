"""nginx as the gRPC proxy of the replicas, run natively from the repository's config.

:func:`render_native` rewrites ``deploy/nginx/sesscache.conf`` (the file the
compose ``nginx`` service mounts) for a native run on loopback, changing only
what a container gives for free: the ``listen`` port, the upstream's
``include`` of the list deploy/nginx/entrypoint.sh writes in the container
(here one ``server`` line per native replica, with the parameters that script
gives them), the log paths, and the temporary directories (so that nginx
needs no write access outside its own folder). For nginx older than 1.25.1
(Debian's 1.22), which has no ``http2`` directive, :func:`legacy_http2` turns
``http2 on;`` into the ``http2`` parameter of ``listen``. Every other
directive is run as written. Each rewrite must match exactly where expected,
so an edit of the file that the rewrite no longer understands fails loudly
instead of silently testing something else.

:class:`Nginx` runs Debian's ``nginx`` binary in the foreground as a child
process (``-p DIR -e DIR/error.log -c DIR/nginx.conf -g 'daemon off; pid ...'``)
and reads its logs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
#: The nginx configuration kept in the repository (the compose service's nginx.conf).
CONFIG = ROOT / "deploy" / "nginx" / "sesscache.conf"
#: The compose nginx service's entrypoint: writes the upstream list, watches it, runs nginx.
ENTRYPOINT = ROOT / "deploy" / "nginx" / "entrypoint.sh"
#: The file CONFIG includes in its upstream (next to nginx.conf), as entrypoint.sh names it.
UPSTREAM_INCLUDE = "sesscache-upstream.conf"
#: The first nginx with the ``http2`` directive (``listen ... http2`` is deprecated there).
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)
#: The port nginx and the replicas listen on inside the compose network.
CONTAINER_PORT = 50051
#: Where Debian puts nginx when /usr/sbin is not on PATH (non-root shells).
_DEBIAN_NGINX = Path("/usr/sbin/nginx")
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class NginxError(RuntimeError):
    """nginx could not be configured, started or stopped."""


def find_nginx() -> str | None:
    """The nginx binary: ``SESSCACHE_NGINX``, then ``nginx`` on PATH, then /usr/sbin/nginx."""
    configured = os.environ.get("SESSCACHE_NGINX", "").strip()
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("nginx")
    if found is not None:
        return found
    if os.access(_DEBIAN_NGINX, os.X_OK):
        return str(_DEBIAN_NGINX)
    return None


def _replace_once(pattern: str, replacement: str, text: str, what: str) -> str:
    """Replace the one match of ``pattern``, keeping its ``indent`` group (if any)."""

    def replace(match: re.Match[str]) -> str:
        return (match.groupdict().get("indent") or "") + replacement

    result, count = re.subn(pattern, replace, text, flags=re.MULTILINE)
    if count != 1:
        raise NginxError(f"{CONFIG.name}: expected one {what}, found {count}")
    return result


def upstream_servers(text: str) -> list[tuple[str, str]]:
    """The ``(address, parameters)`` of each ``server`` line of the ``sesscache`` upstream."""
    block = re.search(r"^\s*upstream\s+sesscache\s*\{(.*?)^\s*\}", text, re.MULTILINE | re.DOTALL)
    if block is None:
        raise NginxError(f"{CONFIG.name}: no `upstream sesscache {{ ... }}` block")
    return [
        (match.group(1), " ".join(match.group(2).split()))
        for match in re.finditer(r"^\s*server\s+(\S+)([^;]*);", block.group(1), re.MULTILINE)
    ]


def upstream_parameters(script: str | None = None) -> str:
    """The parameters entrypoint.sh appends to each replica's ``server`` line by default."""
    text = ENTRYPOINT.read_text(encoding="utf-8") if script is None else script
    found = re.findall(r"^UPSTREAM_PARAMETERS=\$\{UPSTREAM_PARAMETERS:-([^}]*)\}$", text, re.M)
    if len(found) != 1:
        raise NginxError(f"{ENTRYPOINT.name}: expected one default of UPSTREAM_PARAMETERS")
    return " ".join(found[0].split())


def legacy_http2(text: str) -> str:
    """``text`` for nginx older than 1.25.1: ``http2 on;`` becomes ``listen ... http2;``.

    The one adaptation Debian's nginx 1.22 needs: it has no ``http2`` directive,
    only the (since deprecated) ``http2`` parameter of ``listen``. The server
    block must have exactly one ``listen`` and one ``http2 on;``.
    """
    result = _replace_once(r"^[ \t]*http2\s+on;[ \t]*\n", "", text, "`http2 on;`")
    result, count = re.subn(
        r"^([ \t]*listen\s+[^;\s]+)(\s[^;]*)?;", r"\1 http2\2;", result, flags=re.MULTILINE
    )
    if count != 1:
        raise NginxError(f"{CONFIG.name}: expected one `listen`, found {count}")
    return result


def nginx_version(binary: str) -> tuple[int, ...]:
    """The version of the nginx ``binary`` (``nginx -v``)."""
    result = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30, check=False)
    match = re.search(r"nginx/(\d+(?:\.\d+)*)", result.stdout + result.stderr)
    if match is None:
        raise NginxError(f"cannot read the version of {binary}: {result.stderr.strip()}")
    return tuple(int(part) for part in match.group(1).split("."))


def render_native(
    text: str,
    *,
    listen: str,
    upstreams: Sequence[str] | None,
    directory: Path,
    http2_directive: bool = False,
) -> str:
    """``text`` (the repository's config) for a native run in ``directory``.

    ``listen`` is ``HOST:PORT`` for the proxy; ``upstreams`` the ``HOST:PORT``
    of each replica, in the order they get their ``server`` lines (in place
    of the ``include`` entrypoint.sh fills in the container); ``None`` keeps
    the include, for entrypoint.sh to write ``directory / UPSTREAM_INCLUDE``.
    ``http2_directive`` is whether the nginx that runs it has ``http2 on;``
    (1.25.1 and later); without it, :func:`legacy_http2` is applied.
    """
    if upstreams is not None and not upstreams:
        raise NginxError("at least one upstream is needed")
    params = upstream_parameters()
    if upstream_servers(text):
        raise NginxError(f"{CONFIG.name}: the upstream lists servers; entrypoint.sh writes them")
    if upstreams is None:
        servers = rf"\g<indent>include {UPSTREAM_INCLUDE};\n"
    else:
        servers = "".join(f"\\g<indent>server {address} {params};\n" for address in upstreams)
    result, count = re.subn(
        rf"^(?P<indent>[ \t]*)include\s+{re.escape(UPSTREAM_INCLUDE)};[ \t]*\n",
        servers,
        text,
        flags=re.MULTILINE,
    )
    if count != 1:
        raise NginxError(f"{CONFIG.name}: expected one `include {UPSTREAM_INCLUDE};`")
    block = re.search(r"^\s*upstream\s+sesscache\s*\{(.*?)^\s*\}", result, re.M | re.S)
    if block is None or not re.search(r"^\s*(server|include)\s", block.group(1), re.M):
        raise NginxError(f"{CONFIG.name}: the include is not in `upstream sesscache {{ ... }}`")

    result = _replace_once(
        rf"^(?P<indent>[ \t]*)listen\s+{CONTAINER_PORT};",
        f"listen {listen};",
        result,
        f"`listen {CONTAINER_PORT};`",
    )
    if not http2_directive:
        result = legacy_http2(result)
    result = _replace_once(
        r"^error_log\s+stderr\s+(\w+);",
        f"error_log {directory / 'error.log'} warn;",
        result,
        "`error_log stderr LEVEL;`",
    )
    result = _replace_once(
        r"^(?P<indent>[ \t]*)access_log\s+/dev/stdout\s+",
        f"access_log {directory / 'access.log'} ",
        result,
        "`access_log /dev/stdout ...`",
    )
    temp = "".join(f"    {name}_temp_path {directory / 'temp' / name};\n" for name in _TEMP_PATHS)
    return _replace_once(r"^http\s*\{\n", "http {\n" + temp, result, "`http {`")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    """A native nginx proxying to ``upstreams`` (``HOST:PORT`` each), in ``directory``.

    With ``entrypoint`` (environment for it; ``upstreams`` then ``None``),
    nginx is started as the compose service starts it: through
    deploy/nginx/entrypoint.sh, which writes ``directory / UPSTREAM_INCLUDE``,
    keeps it up to date and reloads nginx.
    """

    def __init__(
        self,
        directory: Path,
        upstreams: Sequence[str] | None,
        *,
        binary: str | None = None,
        name: str = "nginx",
        entrypoint: Mapping[str, str] | None = None,
    ) -> None:
        if (upstreams is None) != (entrypoint is not None):
            raise ValueError("give either upstreams or the entrypoint's environment")
        found = binary or find_nginx()
        if found is None:
            raise FileNotFoundError("nginx is not installed (apt-get install nginx)")
        self.binary = found
        self.name = name
        self.directory = directory
        self.upstreams = None if upstreams is None else list(upstreams)
        self.entrypoint = None if entrypoint is None else dict(entrypoint)
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._http2_directive: bool | None = None

    @property
    def target(self) -> str:
        if self.port is None:
            raise NginxError(f"{self.name} is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def config_path(self) -> Path:
        return self.directory / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    @property
    def upstream_file(self) -> Path:
        """The upstream list entrypoint.sh writes (with ``entrypoint``)."""
        return self.directory / UPSTREAM_INCLUDE

    def _command(self, *extra: str) -> list[str]:
        return [
            self.binary,
            "-p",
            f"{self.directory}/",
            "-e",
            str(self.error_log),
            "-c",
            str(self.config_path),
            "-g",
            f"daemon off; pid {self.directory / 'nginx.pid'};",
            *extra,
        ]

    def write_config(self, port: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Worker processes run as an unprivileged user when nginx starts as root.
        self.directory.chmod(0o755)
        for name in _TEMP_PATHS:
            (self.directory / "temp" / name).mkdir(parents=True, exist_ok=True)
        if self._http2_directive is None:
            self._http2_directive = nginx_version(self.binary) >= HTTP2_DIRECTIVE_SINCE
        text = render_native(
            CONFIG.read_text(encoding="utf-8"),
            listen=f"127.0.0.1:{port}",
            upstreams=self.upstreams,
            directory=self.directory,
            http2_directive=self._http2_directive,
        )
        self.config_path.write_text(text, encoding="utf-8")
        if self.entrypoint is not None:
            self.render_upstream()

    def render_upstream(self) -> str:
        """Run ``entrypoint.sh render`` (with ``entrypoint``): the upstream list it wrote."""
        if self.entrypoint is None:
            raise NginxError(f"{self.name} does not run entrypoint.sh")
        result = subprocess.run(
            ["sh", str(ENTRYPOINT), "render"],
            env={**os.environ, "UPSTREAM_FILE": str(self.upstream_file), **self.entrypoint},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise NginxError(f"entrypoint.sh render failed:\n{result.stdout}{result.stderr}")
        return self.upstream_file.read_text(encoding="utf-8")

    def check_config(self) -> str:
        """``nginx -t`` on the rendered config; its output. Raises NginxError if invalid."""
        self.write_config(self.port or _free_port())
        result = subprocess.run(
            self._command("-t"),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise NginxError(f"nginx -t failed:\n{output}")
        return output

    def start(self, timeout: float = 20) -> Self:
        """Start on a free loopback port; wait until it accepts connections."""
        for attempt in range(3):
            port = _free_port()
            self.write_config(port)
            stdout = (self.directory / "nginx.out").open("ab")
            command, env = self._command(), None
            if self.entrypoint is not None:
                command = ["sh", str(ENTRYPOINT), *command]
                env = {**os.environ, "UPSTREAM_FILE": str(self.upstream_file), **self.entrypoint}
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                env=env,
            )
            stdout.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    break
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                    self.port = port
                    return self
                time.sleep(0.02)
            log = self.log_text()
            self._kill()
            if "Address already in use" in log and attempt < 2:
                continue  # another process took the port between probe and bind
            raise NginxError(f"{self.name} did not start:\n{log}")
        raise NginxError(f"{self.name} did not start")  # pragma: no cover

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        self._process = None

    def stop(self) -> None:
        """Graceful stop (SIGQUIT), then SIGKILL if it lingers."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGQUIT)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None

    def worker_pids(self) -> list[int]:
        """The worker processes (children of the master)."""
        if self._process is None:
            return []
        master = self._process.pid
        workers: list[int] = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[1]) == master:
                    workers.append(int(entry.name))
        return workers

    def log_text(self) -> str:
        parts = []
        for path in (self.directory / "nginx.out", self.error_log):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def error_lines(self) -> list[str]:
        if not self.error_log.exists():
            return []
        return self.error_log.read_text(errors="replace").splitlines()

    def upstream_failures(self, address: str) -> list[str]:
        """Error-log lines of calls that failed on the replica at ``address``."""
        marker = f'upstream: "grpc://{address}"'
        return [
            line
            for line in self.error_lines()
            if marker in line and "temporarily disabled" not in line
        ]

    def upstream_disabled(self, address: str) -> list[str]:
        """Error-log lines where nginx marked the replica at ``address`` failed."""
        marker = f'upstream: "grpc://{address}"'
        return [
            line for line in self.error_lines() if marker in line and "temporarily disabled" in line
        ]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
