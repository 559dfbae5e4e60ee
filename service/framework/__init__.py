"""Everything seqserve relies on inside BentoML and uvicorn, in one place, checked when it is imported.

The rest of the service uses public APIs only: ``@bentoml.service`` (its ``service_class``, workers,
traffic, logging and tracing settings), ``@bentoml.api``, ``@bentoml.asgi_app``, ``add_asgi_middleware``,
``bentoml.get_current_service``, ``bentoml.server_context``, ``bentoml.models``, and Starlette's
routing, requests, responses, WebSockets and CORS middleware. What no public hook offers is done here:

``service.framework.connections`` (uvicorn; BentoML starts it with ``http="auto"``, ``ws="auto"`` and
offers no setting to change them or to reach a connection):

* ``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol``, subclassed: its ``on_*`` callbacks,
  ``app``, ``scope``, ``headers``, ``cycle`` (a ``RequestResponseCycle``: its ``body``, ``disconnected`` and
  ``keep_alive``), ``flow`` (``FlowControl``: ``read_paused``, ``pause_reading``, ``resume_reading``),
  ``transport``, ``loop`` and ``client``. For a header timeout (slowloris), the hang-up flag the door and
  the batcher ask (:class:`Client`), the door in front of BentoML's middleware (``service.admission``),
  refused connections left unread until their Retry-After, request bodies read on up to the cap (the
  binary cap for a ``/v2/`` request with binary tensors, ``service.guard``) so a hang-up is seen, and the
  bound on each keep-alive connection (``service.connection_limits``): ``keep_alive = False`` on a
  connection's last request makes uvicorn answer ``connection: close`` and close it after that response.
* ``uvicorn.protocols.websockets.wsproto_impl.WSProtocol``, subclassed: ``/stream`` straight to the stream
  sessions (a dozen ASGI layers per message cost ~12% of a step), messages capped at the body cap
  (``Config.ws_max_size``), no per-message deflate (``Config.ws_per_message_deflate``) and no close
  for a late keep-alive pong (``Config.ws_ping_timeout``).
* ``uvicorn.config.HTTP_PROTOCOLS["auto"]`` and ``WS_PROTOCOLS["auto"]``, pointed at those two classes.

``service.framework.bento`` (BentoML 1.4):

* ``bentoml._internal.server.http.instruments.RunnerTrafficMetricsMiddleware``, replaced by a subclass
  that labels paths no route serves ``/<unknown>``: BentoML labels request metrics with the raw path and
  imports the class from that module when ``_bentoml_impl.server.app`` builds the middleware.
* ``_bentoml_impl.server.mount.PassiveMount``: how that label recognises a path of the app mounted at ``/``
  (labelled with its route's template, e.g. ``/v2/models/{name}/infer``).
* ``bentoml._internal.configuration.containers.BentoMLContainer.prometheus_multiproc_dir``: one Prometheus
  folder per run (BentoML empties its shared one whenever a server starts; ``service.workers``).
* ``_bentoml_sdk.io_models.IORootModel``: the base of the list answers' schemas (``service.schemas``),
  as BentoML builds them itself, so the API page shows the answers' fields.
* ``bentoml._internal.service.openapi.specification`` (``OpenAPISpecification``, ``Info``, ``PathItem``):
  the API page's spec, which ``service.openapi`` corrects.
* the logger ``bentoml._internal.server.http_app``: its traceback for every body that fails validation
  becomes one WARNING line.
* ``bentoml_cli``'s ``serve`` command: how ``service.startup`` tells ``bentoml serve``'s main process.

:func:`~service.framework.internals.check` looks for every one of these (``INTERNALS`` there) before
anything here imports them, so an upgrade that moved one stops the server at once with one line
naming it, ``seqserve: cannot start: <internal> ...``, instead of serving wrongly. The versions tested
are pinned in ``pyproject.toml``; tests/test_framework.py runs the same check.
"""

from service.framework.internals import FrameworkChanged, check

try:
    check()
except FrameworkChanged as err:
    raise SystemExit(f"seqserve: cannot start: {err}") from None

# Below the check on purpose: these modules import the internals it looked for.
from service.framework.bento import (  # noqa: E402
    Info, IORootModel, OpenAPISpecification, PathItem, label_unknown_paths_together, quiet_validation_tracebacks,
    serve_command, set_prometheus_dir,
)
from service.framework.connections import Client, install_protocols, serve_streams  # noqa: E402

__all__ = [
    "Client", "FrameworkChanged", "IORootModel", "Info", "OpenAPISpecification", "PathItem", "check", "install",
    "serve_command", "serve_streams", "set_prometheus_dir",
]


def install(settings) -> None:
    """Put every hook above in place in this process (``service.app`` calls it once, at import, before BentoML
    builds the app): uvicorn's protocols with ``settings``, BentoML's metrics labels, one line per invalid body."""
    install_protocols(settings)
    label_unknown_paths_together()
    quiet_validation_tracebacks()
