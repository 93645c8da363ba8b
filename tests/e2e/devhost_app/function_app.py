"""A probe app for the dev host's own tests (tests/test_azurite.py): each function reports
what the host gave it on the queue ``probe-out``, so a test can see the trigger objects,
keys and output bindings without this project's completion logic in the way."""

import json

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
STORAGE = "AzureWebJobsStorage"


def _time(value):
    return None if value is None else value.isoformat()


@app.route(route="hello", methods=["GET"])
async def hello(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("hello", mimetype="text/plain")


@app.route(route="open/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def open_route(req: func.HttpRequest) -> func.HttpResponse:
    """A plain (not async) function: the host runs it on a thread."""
    return func.HttpResponse(json.dumps({"name": req.route_params["name"], "q": req.params.get("q")}),
                             mimetype="application/json")


@app.queue_trigger(arg_name="msg", queue_name="probe-in", connection=STORAGE)
@app.queue_output(arg_name="out", queue_name="probe-out", connection=STORAGE)
async def probe_queue(msg: func.QueueMessage, out: func.Out[str]) -> None:
    body = msg.get_body().decode()
    if body == "fail":
        raise RuntimeError("asked to fail")
    out.set(json.dumps({"function": "probe_queue", "id": msg.id, "body": body,
                        "dequeue_count": msg.dequeue_count, "pop_receipt": msg.pop_receipt,
                        "insertion_time": _time(msg.insertion_time), "expiration_time": _time(msg.expiration_time),
                        "time_next_visible": _time(msg.time_next_visible)}))


@app.event_grid_trigger(arg_name="event")
@app.queue_output(arg_name="out", queue_name="probe-out", connection=STORAGE)
async def probe_event(event: func.EventGridEvent, out: func.Out[str]) -> None:
    if isinstance(event, func.CloudEvent):
        report = {"kind": "CloudEvent", "id": event.id, "type": event.type, "source": event.source,
                  "subject": event.subject, "data": event.get_json()}
    else:
        report = {"kind": "EventGridEvent", "id": event.id, "type": event.event_type, "subject": event.subject,
                  "data": event.get_json()}
    out.set(json.dumps({"function": "probe_event", **report}))
