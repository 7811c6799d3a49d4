"""A plain WSGI app behind Werkzeug's ProxyFix, as a user would deploy it behind
the middleware Envoy. It answers with the URL it builds for itself."""
import json
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers import Request, Response


@Request.application
def app(request):
    return Response(
        json.dumps(
            {
                "url_root": request.url_root,
                "url": request.url,
                "remote_addr": request.remote_addr,
                "script_root": request.script_root,
                "path": request.path,
                "remote_user": request.headers.get("X-Remote-User"),
            }
        ),
        content_type="application/json",
    )


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = make_server("127.0.0.1", int(sys.argv[1]), ProxyFix(app, x_for=1, x_proto=1, x_host=1, x_prefix=1), handler_class=QuietHandler)
    print("listening", flush=True)
    server.serve_forever()
