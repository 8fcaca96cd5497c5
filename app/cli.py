"""The ``imgstream`` command line: stack, models, worker, upload, predictions, replay, bench."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from app.errors import ImgstreamError
from app.settings import get_settings

cli = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
stack_cli = typer.Typer(no_args_is_help=True, help="The local Kafka, PostgreSQL and S3 services.")
cli.add_typer(stack_cli, name="stack")
console = Console()


@stack_cli.command("up")
def stack_up(services: list[str] = typer.Argument(None, help="postgres, s3, kafka (default: all)")) -> None:
    """Install what is missing and start the services on 127.0.0.1; idempotent."""
    from app import stack

    stack.up(get_settings(), services, report=console.print)


@stack_cli.command("down")
def stack_down(services: list[str] = typer.Argument(None)) -> None:
    """Stop the services this project started (by pid file)."""
    from app import stack

    stack.down(get_settings(), services, report=console.print)


@stack_cli.command("status")
def stack_status(services: list[str] = typer.Argument(None)) -> None:
    """Each service with its pid and a real health check; exits 1 if one is unhealthy."""
    from app import stack

    table = Table("service", "pid", "health")
    rows = stack.status(get_settings(), services)
    for name, pid, health in rows:
        table.add_row(name, str(pid or "-"), health if health != "healthy" else "[green]healthy[/]")
    console.print(table)
    raise typer.Exit(0 if all(h == "healthy" for *_, h in rows) else 1)


def main() -> None:
    try:
        cli()
    except ImgstreamError as exc:
        Console(stderr=True).print(f"[red]error[/]: {exc.message}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
