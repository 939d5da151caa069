"""ASGI entry point: ``uvicorn llmproxy.asgi:application``.

Proxy paths go straight to Channels consumers (no Django middleware on the hot path);
everything else (admin, management API, dashboard, health) goes to Django.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmproxy.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()  # sets Django up before the routing imports models

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from llmproxy.gateway.lifespan import lifespan  # noqa: E402
from llmproxy.gateway.routing import http_router, websocket_router  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": http_router(ASGIStaticFilesHandler(django_app)),
        "websocket": websocket_router(),
        "lifespan": lifespan,
    }
)
