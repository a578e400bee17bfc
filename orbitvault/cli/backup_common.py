"""What every backup command shares: restic's global options, passwords, exit codes, output.

Global options are attached to each command (`@repo_command`) rather than to the root group, so
they work after the command name exactly as restic users type them (`orbitvault snapshots -r
REPO --json`). Errors raised on purpose become one line on stderr ("Fatal: ...", or a JSON
`exit_error` object with --json) and restic's exit codes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click
import platformdirs

from orbitvault import allocator
from orbitvault.client.errors import RepositoryLocked, RepositoryNotFound, WrongPassword
from orbitvault.errors import OrbitVaultError

# True when the command runs in a process of its own that ends with it (`main`), not inside a
# test's or an application's interpreter: a command may then skip tidying the interpreter up.
PROCESS_ENDS_WITH_COMMAND = False

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INCOMPLETE = 3
EXIT_NO_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12


class ExitCode(Exception):
    """Leave the command with a specific exit code after output was written."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Ctx:
    repo_url: str | None
    password_file: str | None
    password_command: str | None
    json: bool
    quiet: bool
    verbose: int
    cache_dir: str | None
    no_cache: bool
    no_lock: bool
    retry_lock: float

    # --- passwords ---------------------------------------------------------------------------

    def password(self, *, confirm: bool = False, prompt: str = "enter password for repository") -> bytes:
        env = os.environ.get("ORBITVAULT_PASSWORD")
        if self.password_command:
            out = subprocess.run(shlex.split(self.password_command), capture_output=True, check=False)
            if out.returncode != 0:
                raise OrbitVaultError(f"--password-command failed with exit code {out.returncode}")
            return out.stdout.rstrip(b"\r\n")
        if self.password_file:
            with open(self.password_file, "rb") as f:
                return f.read().rstrip(b"\r\n")
        if env is not None:
            return env.encode()
        return prompt_password(prompt, confirm=confirm)

    # --- repository --------------------------------------------------------------------------

    def backend(self) -> Any:
        from orbitvault.client.backend import open_backend

        cache = None if self.no_cache else (self.cache_dir or platformdirs.user_cache_dir("orbitvault"))
        if self.repo_url:
            return open_backend(self.repo_url, cache_dir=cache)
        local = _local_constellation()
        if local is None:
            raise click.UsageError(
                "no repository given: use -r/--repo or ORBITVAULT_REPOSITORY "
                "(or start a local one with `orbitvault constellation up`)"
            )
        return local(cache)

    def open_repo(self, *, load_index: bool = False, backend: Any = None) -> Any:
        """Open the repository (on `backend` when the caller made it already, e.g. to stage it)."""
        from orbitvault.client.backend import CONFIG
        from orbitvault.client.repository import Repository

        backend = backend if backend is not None else self.backend()

        if not backend.exists(CONFIG):
            raise RepositoryNotFound(f"no repository at {backend.url} (run `orbitvault init` first)")
        repo = Repository.open(backend, self.password())
        if not self.quiet and not self.json:
            click.echo(f"repository {repo.config.id[:8]} opened (version {repo.config.version})", err=True)
        if load_index:
            repo.load_index()
        return repo

    @contextlib.contextmanager
    def locked(self, repo: Any, *, exclusive: bool = False) -> Iterator[Any]:
        if self.no_lock and not exclusive:
            yield None
            return
        lock = repo.lock(exclusive=exclusive, retry_for=self.retry_lock)
        try:
            yield lock
        finally:
            lock.release()

    # --- output ------------------------------------------------------------------------------

    @property
    def progress_enabled(self) -> bool:
        return not self.json and not self.quiet and sys.stderr.isatty()

    def print(self, text: str = "") -> None:
        if not self.quiet and not self.json:
            click.echo(text)

    def info(self, text: str) -> None:
        """Diagnostics for -v."""
        if self.verbose and not self.json:
            click.echo(text, err=True)

    def emit(self, obj: Any) -> None:
        """One JSON document (or one JSON line) on stdout."""
        click.echo(json.dumps(obj, default=_json_default))

    def warn(self, text: str) -> None:
        if self.json:
            click.echo(json.dumps({"message_type": "warning", "message": text}), err=True)
        elif not self.quiet:
            click.echo(f"warning: {text}", err=True)

    def error(self, item: str, message: str, during: str) -> None:
        if self.json:
            click.echo(
                json.dumps({"message_type": "error", "error": {"message": message}, "during": during, "item": item}),
                err=True,
            )
        else:
            click.echo(f"error: {item}: {message}", err=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, bytes):
        return o.hex()
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def prompt_password(prompt: str, *, confirm: bool = False) -> bytes:
    if not sys.stdin.isatty():
        raise OrbitVaultError(
            "no password: set ORBITVAULT_PASSWORD, --password-file or --password-command (stdin is not a terminal)"
        )
    pw = click.prompt(prompt, hide_input=True, confirmation_prompt="enter password again" if confirm else False)
    return str(pw).encode()


def _exit_code(e: BaseException) -> int:
    if isinstance(e, RepositoryNotFound):
        return EXIT_NO_REPOSITORY
    if isinstance(e, RepositoryLocked):
        return EXIT_LOCKED
    if isinstance(e, WrongPassword):
        return EXIT_WRONG_PASSWORD
    return EXIT_ERROR


def repo_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add restic's global options to a command and map its errors to exit codes."""

    @click.option(
        "-r",
        "--repo",
        "repo_url",
        envvar="ORBITVAULT_REPOSITORY",
        help="Repository (local:/path or orbit://HOST:PORT/BUCKET).",
    )
    @click.option("--password-file", envvar="ORBITVAULT_PASSWORD_FILE", help="File holding the repository password.")
    @click.option("--password-command", envvar="ORBITVAULT_PASSWORD_COMMAND", help="Command printing the password.")
    @click.option("--json", "json_out", is_flag=True, help="JSON output (one document, or JSON lines).")
    @click.option("-q", "--quiet", is_flag=True, help="Only errors.")
    @click.option("-v", "--verbose", count=True, help="More detail (repeat for more).")
    @click.option("--cache-dir", envvar="ORBITVAULT_CACHE_DIR", help="Metadata cache directory (remote backends).")
    @click.option("--no-cache", is_flag=True, help="Do not use a local metadata cache.")
    @click.option("--no-lock", is_flag=True, help="Do not take a shared lock (read-only use).")
    @click.option("--retry-lock", type=float, default=0.0, help="Seconds to keep retrying a held lock.")
    @functools.wraps(fn)
    def wrapper(
        repo_url: str | None,
        password_file: str | None,
        password_command: str | None,
        json_out: bool,
        quiet: bool,
        verbose: int,
        cache_dir: str | None,
        no_cache: bool,
        no_lock: bool,
        retry_lock: float,
        **kwargs: Any,
    ) -> None:
        allocator.tune_client()
        ctx = Ctx(
            repo_url,
            password_file,
            password_command,
            json_out,
            quiet,
            verbose,
            cache_dir,
            no_cache,
            no_lock,
            retry_lock,
        )
        try:
            fn(ctx, **kwargs)
        except ExitCode as e:
            sys.exit(e.code)
        except (click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except (OrbitVaultError, OSError) as e:
            code = _exit_code(e)
            msg = str(e) if isinstance(e, OrbitVaultError) else f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
            if json_out:
                click.echo(json.dumps({"message_type": "exit_error", "code": code, "message": msg}), err=True)
            else:
                click.echo(f"Fatal: {msg}", err=True)
            sys.exit(code)

    return wrapper


# --- formatting -----------------------------------------------------------------------------------


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3f} {unit}"
        n /= 1024
    return f"{n} B"


def fmt_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S")


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    out.append(line)
    return "\n".join(out)


@contextlib.contextmanager
def live_progress(ctx: Ctx, describe: Callable[[], tuple[str, float, float | None]]) -> Iterator[None]:
    """A rich progress line refreshed from `describe()` -> (text, completed, total), terminals only."""
    if not ctx.progress_enabled:
        yield
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TransferSpeedColumn(), TimeElapsedColumn(), transient=True
    )
    task = progress.add_task("", total=None)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.2):
            text, done, total = describe()
            progress.update(task, description=text, completed=done, total=total)

    with progress:
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()


def _local_constellation() -> Callable[[str | None], Any] | None:
    """The running local constellation's repository, as the default when none is configured."""
    from orbitvault.ground.constellation import default_client_settings

    settings = default_client_settings()
    if settings is None:
        return None

    def open_local(cache: str | None) -> Any:
        from orbitvault.client.backend_orbit import OrbitBackend, OrbitCredentials

        creds = OrbitCredentials(
            settings.api_key, settings.tls_ca, settings.tls_cert, settings.tls_key, settings.insecure
        )
        return OrbitBackend(settings.repository, creds, cache_dir=cache)

    return open_local
