"""``ray-rewards label SOURCE``: serve the labeling page (register it with
``main.add_command(label)`` in :mod:`ray_rewards.cli`; ``python -m
ray_rewards.labeling.command`` runs it alone).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the server as Ctrl-C does


@click.command("label")
@click.argument("source")
@click.option(
    "--store",
    default=None,
    help="Parquet SOURCE only: the preference store every answer is also appended to "
    "(default: <SOURCE>_labels; its queue folder is <store>.queue).",
)
@click.option(
    "--env",
    "env_id",
    default=None,
    help="Render the frames of queries that have none (an env with a state setter, e.g. "
    "Pendulum-v1; needs pygame); without frames the page plots the observations.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any other than loopback requires a token.",
)
@click.option(
    "--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="0: a free one."
)
@click.option(
    "--token",
    default=None,
    envvar="RAY_REWARDS_LABEL_TOKEN",
    help="Required from every request [env RAY_REWARDS_LABEL_TOKEN]; default: none on "
    "loopback, a new one printed otherwise.",
)
@click.option(
    "--labeler-timeout",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a labeler holds a query before it returns to the queue.",
)
@click.option(
    "--budget",
    default=None,
    type=click.IntRange(min=1),
    help="Labels to gather (skips not counted); default: every pair of a Parquet SOURCE, "
    "no limit for a queue.",
)
def label(
    source: str,
    store: str | None,
    env_id: str | None,
    host: str,
    port: int,
    token: str | None,
    labeler_timeout: float,
    budget: int | None,
) -> None:
    """Serve a web page where people label fragment pairs from SOURCE: which of two
    fragments is better (or equal, or skip).

    SOURCE is an online-preference job's queue folder (<storage>/preferences/queue:
    the job collects the answers into its own store), or a Parquet set of fragment
    pairs such as a pipeline run's data/train_pairs: then every answer is also
    appended to the preference store --store, which `ray-rewards train` reads.
    Answers are written before they are acknowledged, so stopping or killing the
    server loses none; a restart serves only what is still unanswered.
    """
    from ray_rewards.labeling.server import LabelServer
    from ray_rewards.labeling.service import LabelingService

    log = logging.getLogger("ray_rewards.labeling")
    if not log.handlers:  # warnings (a clip that failed to render) on stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("label: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        service = LabelingService(
            source, store=store, env_id=env_id, labeler_timeout=labeler_timeout, budget=budget
        )
    except (OSError, ValueError, ImportError) as err:
        raise click.ClickException(str(err)) from err
    try:
        try:
            server = LabelServer(service, host, port, token)
        except OSError as err:
            raise click.ClickException(f"cannot listen on {host}:{port}: {err}") from err
        status = service.status()
        budget_text = f" of {status['budget']}" if status["budget"] else ""
        click.echo(f"labeling {service.source} ({service.mode} source, queue {service.queue_dir})")
        if service.store_path:
            click.echo(f"labels go to the preference store {service.store_path}")
        if service.renderer is not None:
            frames = f"rendered ({env_id})"
        elif service.mode == "queue":
            frames = "the job's where it rendered them, else observations plotted"
        else:
            frames = "none, observations plotted (--env renders them)"
        click.echo(
            f"{status['labeled']}{budget_text} labeled, {status['pending']} pairs pending; "
            f"frames: {frames}"
        )
        if server.token and not token:
            click.echo(f"token (required from every request): {server.token}")
        click.echo(f"open {server.login_url} to label (Ctrl-C stops)")
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _stop)  # (under ray-rewards' supervisor: its own)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        service.close()
    click.echo("stopped; every acknowledged answer is on disk")


if __name__ == "__main__":
    label()
