# Writes src/control/openapi.json, the control API's OpenAPI document: edit the routes here,
# run `python3 scripts/openapi.py`, commit both. tests/api.rs checks the daemon answers as it says.
import json
S = lambda t, **k: dict(type=t, **k)
ref = lambda n: {"$ref": f"#/components/schemas/{n}"}
nullable = lambda t, **k: dict(type=[t, "null"], **k)
ts = nullable("string", format="date-time")
err = {"description": "Refused: `error` says why, `field` names the setting at fault.",
       "content": {"application/json": {"schema": ref("Error")}}}
def resp(desc, schema, status="200", extra=None):
    r = {status: {"description": desc, "content": {"application/json": {"schema": schema}}}}
    for code in (extra or []):
        r[str(code)] = err
    return r
name_param = {"name": "name", "in": "path", "required": True, "schema": S("string"), "description": "The endpoint's name."}
limit = {"name": "limit", "in": "query", "schema": S("integer", minimum=1, maximum=1000, default=100)}
doc = {
 "openapi": "3.1.0",
 "info": {"title": "edgehook control API", "version": "1",
  "description": "The gateway's own API, served by the daemon on its local listener (telemetry.listen). Reads on loopback need no token; every call that changes something needs `Authorization: Bearer <token>` (`edgehook token` prints it) and, from a browser, this server's own Origin. Off loopback the listener speaks HTTPS only (telemetry.tls_cert) and every call but the console's page needs the token. Secrets are write-only: never returned."},
 "servers": [{"url": "http://127.0.0.1:9187"}],
 "components": {
  "securitySchemes": {"token": {"type": "http", "scheme": "bearer", "description": "The API token in the state directory (api-token)."},
   "standardWebhooks": {"type": "apiKey", "in": "header", "name": "webhook-signature", "description": "Standard Webhooks: `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>` under a `whsec_` secret of upstream.secrets; several, space-separated, while a secret is rotated). Refused (401) when unsigned, wrongly signed, outside upstream.tolerance of the gateway's clock, or an id already taken within it."}},
  "schemas": {
   "Error": S("object", required=["error"], properties={"error": S("string"), "field": S("string", description="The setting or parameter at fault.")}),
   "Gateway": S("object", required=["id","version","uptime_seconds","event_types","ready","mqtt","serial","modbus","outbox"], properties={
     "id": S("string"), "version": S("string"), "uptime_seconds": S("integer", minimum=0),
     "event_types": S("array", items=S("string"), description="Every event type this gateway makes (what an endpoint's events may name)."),
     "ready": S("boolean"), "not_ready": nullable("string", description="Why /healthz fails, when it does."),
     "mqtt": S("object", required=["enabled","connected","broker"], properties={"enabled": S("boolean"), "connected": S("boolean"), "broker": nullable("string")}),
     "serial": S("object", required=["ports","open"], properties={"ports": S("array", items=S("string")), "open": S("integer")}),
     "modbus": S("object", required=["buses","open"], properties={"buses": S("array", items=S("string"), description="Each bus's serial path, or tcp://host:port."), "open": S("integer")}),
     "outbox": S("object", required=["pending","bytes","dead_letters","writable"], properties={"pending": S("integer"), "bytes": S("integer"), "dead_letters": S("integer"), "writable": S("boolean")})}),
   "Health": S("string", enum=["unknown","online","offline","lost"]),
   "Device": S("object", required=["id","class","health","last_seen","last_reading","last_report","values","report_pending","stale","version","state","sync","desired"], properties={
     "actions": S("array", items=S("string"), description="The actions its class takes (device_classes.actions): in the one device's view only."),
     "health_history": S("array", description="Its latest changes of health (up to 8), oldest first: in the one device's view only.", items=S("object", required=["at","health"], properties={"at": ts, "health": ref("Health")})),
     "id": S("string"), "class": nullable("string", description="The device class whose `match` fits, if any."),
     "health": ref("Health"), "last_seen": ts, "last_reading": ts, "last_report": ts,
     "values": S("object", description="The last reported value of every field."),
     "report_pending": S("boolean", description="A report waits out min_interval."),
     "stale": S("boolean"), "version": {"description": "The last value of the class's version_field.", "type": ["string","number","boolean","object","array","null"]},
     "state": S("object", description="The last reported value of each of the class's state_fields (battery, tamper, ...)."),
     "sync": {"oneOf": [S("null"), S("object", required=["reported","in_sync","differs_since","told"], properties={
       "reported": {"description": "The sync_field's last value.", "type": ["string","number","boolean","object","array","null"]},
       "in_sync": S("boolean"), "differs_since": ts, "told": S("boolean", description="device.out_of_sync was sent, and no device.in_sync since.")})]},
     "desired": {"description": "The sync value desired for this device alone (else its class's).", "type": ["string","number","boolean","object","array","null"]}}),
   "Action": S("object", required=["id","device","name","params","status","reason","submitted","deadline","sent_at","done_at"], properties={
     "id": S("string"), "device": S("string"), "name": S("string"),
     "params": {"type": ["string","number","boolean","object","array","null"]},
     "status": S("string", enum=["waiting","sent","succeeded","failed","timed_out","expired","rejected","cancelled"]),
     "reason": nullable("string"), "submitted": ts, "deadline": ts, "sent_at": ts, "done_at": ts}),
   "Booking": S("object", required=["booking_id","workspace_id","start","end","details"], properties={
     "booking_id": S("string"), "workspace_id": S("string"), "start": ts, "end": ts,
     "details": {"description": "What else upstream said of it (a title, an organiser).", "type": ["object","null"]}}),
   "Command": S("object", description="One command from upstream. SpaceOS's own webhook shape is taken as it is: `event` for `type`, `meeting_space_id` for `workspace_id`, `start_time`/`end_time` for `start`/`end`.", required=["data"], properties={
     "type": S("string", enum=["device.action_requested","booking.start","booking.end","booking.cancelled"]),
     "event": S("string", description="SpaceOS's name for `type`."),
     "data": {"oneOf": [
       S("object", title="device.action_requested", required=["id","device","name"], properties={"id": S("string", maxLength=128, description="The idempotency key: one execution per id, whatever is resent."), "device": S("string"), "name": S("string"), "params": {"type": ["string","number","boolean","object","array","null"]}, "deadline": S("string", format="date-time")}),
       S("object", title="booking.start", required=["booking_id","start","end"], description="Booked from start until end (an early notice, e.g. T-15, books nothing before start). Other fields are kept as the booking's details and passed to the room's display (show_booking).", properties={"booking_id": S("string"), "workspace_id": S("string"), "meeting_space_id": S("string"), "start": S("string", format="date-time"), "end": S("string", format="date-time"), "start_time": S("string", format="date-time"), "end_time": S("string", format="date-time")}),
       S("object", title="booking.end", required=["booking_id"], properties={"booking_id": S("string"), "workspace_id": S("string"), "meeting_space_id": S("string")})]}}),
   "Poll": S("object", required=["gateway_id","wait","taken"], properties={
     "gateway_id": S("string"), "cursor": S("string", description="The last cursor upstream gave; absent at first. Everything before it is taken: upstream may drop it."),
     "wait": S("integer", description="Seconds upstream may hold the poll while it has nothing (upstream.pull.wait)."),
     "taken": S("array", description="What became of each command of the previous answer: the status the push listener would have answered.", items=S("object", required=["id","status"], properties={"id": S("string"), "status": S("integer"), "error": S("string")}))}),
   "PollAnswer": S("object", properties={
     "cursor": S("string", maxLength=1024, description="Where the next poll starts; absent: where this one started. Kept by the gateway (on disk) only once every command in `commands` is taken."),
     "commands": S("array", maxItems=256, items={"allOf": [ref("Command"), S("object", required=["id"], properties={"id": S("string", description="Upstream's id of the command, reported in the next poll's `taken`.")})]})}),
   "Workspace": S("object", required=["id","status","present","vacated_at","since","sensors","display"], properties={
     "id": S("string"), "status": S("string", enum=["Free","Occupied","Booked","Unknown"]), "present": S("boolean"), "vacated_at": ts,
     "since": dict(ts, description="When the status became what it is (null before the first, or in a store older than this field)."),
     "sensors": S("array", items=S("string")), "display": nullable("string")}),
   "EndpointSettings": S("object", description="An endpoint's settings, as in the configuration file's [[endpoints]] (durations as \"30s\", sizes as \"1MiB\" or bytes). `secret`, `secrets` and `headers` are write-only.", required=["name","url"], properties={
     "name": S("string", pattern="^[A-Za-z0-9_-]{1,64}$"), "description": S("string", maxLength=500), "active": S("boolean"),
     "url": S("string", description="https://, or http:// to this host"), "secret": S("string", writeOnly=True), "secrets": S("array", items=S("string"), writeOnly=True),
     "events": S("array", items=S("string"), description="Event types or patterns (device.*)."),
     "format": S("string", enum=["edgehook","spaceos","roomz","roomz-presence","gospace","generic","cloudevents"]),
     "signature": S("string", enum=["hmac","hmac-sha256-hex","standard-webhooks"]),
     "headers": S("object", additionalProperties=S("string"), writeOnly=True, description="Custom request headers (an API key); values are secrets."),
     "retry": S("object", properties={"initial": S("string"), "max": S("string"), "multiplier": S("number"), "jitter": S("number")}),
     "max_attempts": S("integer", minimum=1), "max_age": S("string"), "timeout": S("string")},
     additionalProperties=True),
   "Endpoint": S("object", required=["name","description","source","url","active","state","disabled","paused_since","secrets_set","headers","settings","pending","oldest_pending","dead_letters","dropped","last_success","last_failure","last_error","last_latency_ms"], properties={
     "name": S("string"), "description": S("string"), "source": S("string", enum=["file","api"], description="Where it is defined: edited there."),
     "url": S("string", description="Without credentials or query string."), "active": S("boolean"),
     "state": S("string", enum=["active","paused","disabled","inactive","draining"]),
     "disabled": {"oneOf": [{"type": "null"}, S("object", required=["reason","since"], properties={"reason": S("string"), "since": S("string")})]},
     "paused_since": nullable("string"), "secrets_set": S("integer", minimum=0), "headers": S("array", items=S("string"), description="Custom header names (values are secrets)."),
     "settings": S("object", description="Every other setting, without secrets."),
     "pending": S("integer"), "oldest_pending": ts, "dead_letters": S("integer"), "dropped": S("integer"),
     "last_success": ts, "last_failure": ts, "last_error": nullable("string"), "last_latency_ms": nullable("integer")}),
   "Queue": S("object", required=["endpoint","state","routed","pending","oldest_pending","bytes","dead_letters","dropped","disabled","paused_since","last_success","last_failure"], properties={
     "endpoint": S("string"), "state": S("string", enum=["active","paused","disabled","inactive","draining","not configured"]), "routed": S("boolean"),
     "pending": S("integer"), "oldest_pending": ts, "bytes": S("integer"), "dead_letters": S("integer"), "dropped": S("integer"),
     "disabled": {"oneOf": [S("null"), S("object", required=["reason","since"], properties={"reason": S("string"), "since": S("string")})]},
     "paused_since": nullable("string"), "last_success": ts, "last_failure": ts}),
   "OutboxStatus": S("object", required=["pending","bytes","max_bytes","dead_letters","writable","queues"], properties={
     "pending": S("integer"), "bytes": S("integer"), "max_bytes": S("integer", description="outbox.max_size: the events it may hold, shared out among the endpoints' queues."), "dead_letters": S("integer"), "writable": S("boolean"), "queues": S("array", items=ref("Queue"))}),
   "OutboxEvent": S("object", required=["endpoint","event_id","type","lane","created","bytes"], properties={
     "endpoint": S("string"), "event_id": S("string"), "type": S("string"), "lane": S("string"), "created": ts, "bytes": S("integer"),
     "dead": S("object", required=["reason","attempts","last_status","last_error","at"], properties={"reason": S("string"), "attempts": S("integer"), "last_status": nullable("integer"), "last_error": S("string"), "at": ts})}),
   "Delivery": S("object", required=["at","endpoint","event_id","ok","status","ms","error"], properties={
     "at": ts, "endpoint": S("string"), "event_id": S("string"), "type": nullable("string", description="The event's type (null on attempts logged before types were)."), "lane": nullable("string", description="device:<id>, workspace:<id> or group:<id>."), "ok": S("boolean"), "status": nullable("integer"), "ms": S("integer"), "error": nullable("string")}),
   "Body": S("object", required=["body","bytes","truncated"], properties={"body": S("string", description="Its start as text (bytes that are not UTF-8 as U+FFFD)."), "bytes": S("integer", description="The whole size (of an answer, or of a gzipped request past the cut: as far as it was read)."), "truncated": S("boolean")}),
   "DeliveryDetail": S("object", required=["event_id","attempts","exchange"], properties={
     "event_id": S("string"), "attempts": S("array", items=ref("Delivery"), description="Its attempts in the delivery log, oldest first."),
     "exchange": {"description": "The latest request that carried it and the answer, kept in memory for the latest 64 requests (16 KiB of a body, 4 KiB of an answer; request headers are not kept): null when no longer kept, or after a restart.",
       "oneOf": [{"type": "null"}, S("object", required=["at","endpoint","events","request","response"], properties={
         "at": ts, "endpoint": S("string"), "events": S("integer", description="Events in the request (more than 1: a batch)."),
         "request": {"allOf": [ref("Body"), S("object", properties={"content_type": nullable("string")})]},
         "response": {"description": "null when the receiver never answered (the attempt's error says why).", "oneOf": [{"type": "null"}, {"allOf": [ref("Body"), S("object", required=["status"], properties={"status": S("integer")})]}]}})]}}),
   "TestResult": S("object", required=["event_id","type","delivered","status","ms","error","at"], properties={
     "event_id": S("string"), "type": S("string"), "delivered": S("boolean"), "status": nullable("integer"), "ms": S("integer"), "error": nullable("string"), "at": ts}),
  }},
 "paths": {},
}
P = doc["paths"]
def op(path, method, summary, responses, params=None, body=None, changes=False, tag=None):
    o = {"summary": summary, "operationId": summary.split(":")[0].replace(" ", "_").lower(), "responses": responses}
    if params: o["parameters"] = params
    if body: o["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if changes: o["security"] = [{"token": []}]
    P.setdefault(path, {})[method] = o
op("/v1/openapi.json", "get", "openapi: this document", {"200": {"description": "The OpenAPI document.", "content": {"application/json": {"schema": S("object")}}}})
op("/v1/gateway", "get", "gateway: id, version, uptime, broker, serial ports and Modbus buses, outbox", resp("The gateway.", ref("Gateway")))
op("/v1/devices", "get", "devices: the devices edgehook knows, by id, a page at a time", resp("The devices.", S("object", required=["devices", "next"], properties={"devices": S("array", items=ref("Device")), "next": S(["string", "null"], description="When more devices follow (the page is cut at `limit` or at 1 MiB of JSON): the last id, to give as `after` for the next page; null on the last page.")}), extra=[400]),
   params=[limit, {"name": "after", "in": "query", "schema": S("string"), "description": "Only devices whose id sorts after this one (the previous page's `next`)."}])
op("/v1/devices/{id}", "get", "device: one device", resp("The device.", ref("Device"), extra=[404]), params=[{"name": "id", "in": "path", "required": True, "schema": S("string")}])
op("/v1/devices/{id}", "delete", "forget device: device.unregistered, its state deleted (registered anew if heard from again); answered once durable", {"204": {"description": "Forgotten."}, "401": err, "404": err, "409": err}, params=[{"name": "id", "in": "path", "required": True, "schema": S("string")}], changes=True)
op("/v1/devices/{id}/desired", "put", "set desired: the sync value desired for this device alone (null clears it); compared at once", resp("The device.", ref("Device"), extra=[400, 401, 404, 409]), params=[{"name": "id", "in": "path", "required": True, "schema": S("string")}],
   body=S("object", required=["value"], properties={"value": {"type": ["string","number","boolean","object","array","null"]}}), changes=True)
aid = [{"name": "id", "in": "path", "required": True, "schema": S("string"), "description": "The action's id."}]
op("/v1/actions", "post", "submit action: to one device, executed at least once, told as device.action_completed; answered once durable (202), or with what became of an id already known (200)",
   {**resp("Accepted.", ref("Action"), "202", extra=[400, 401, 404, 409, 422, 429]), **resp("Known already: nothing is done again.", ref("Action"))},
   body=S("object", required=["id","device","name"], properties={"id": S("string", maxLength=128), "device": S("string", maxLength=128), "name": S("string", maxLength=128),
     "params": {"type": ["string","number","boolean","object","array","null"]}, "deadline": S("string", format="date-time", description="Sent by then, or expired; by default devices.action_deadline from now.")}), changes=True)
op("/v1/actions/{id}", "get", "action: where it is", resp("The action.", ref("Action"), extra=[404, 409]), params=aid)
op("/v1/actions/{id}", "delete", "cancel action: while it has not been sent", resp("Cancelled.", ref("Action"), extra=[401, 404, 409]), params=aid, changes=True)
op("/v1/bookings", "get", "bookings: upstream's bookings kept (booking.start until its end or booking.end)", resp("The bookings.", S("object", required=["bookings"], properties={"bookings": S("array", items=ref("Booking"))})))
op("/v1/workspaces", "get", "workspaces: every configured workspace and its status", resp("The workspaces.", S("object", required=["workspaces"], properties={"workspaces": S("array", items=ref("Workspace"))})))
op("/v1/endpoints", "get", "endpoints: every endpoint, from the file and from the API", resp("The endpoints.", S("object", required=["endpoints"], properties={"endpoints": S("array", items=ref("Endpoint"))})))
op("/v1/endpoints", "post", "create endpoint: persisted and applied at once", resp("Created.", ref("Endpoint"), "201", extra=[400, 401, 403, 409]), body=ref("EndpointSettings"), changes=True)
op("/v1/endpoints/{name}", "get", "endpoint: one endpoint", resp("The endpoint.", ref("Endpoint"), extra=[404]), params=[name_param])
op("/v1/endpoints/{name}", "put", "replace endpoint: every setting anew (the queue is kept)", resp("Replaced.", ref("Endpoint"), extra=[400, 401, 404, 409]), params=[name_param], body=ref("EndpointSettings"), changes=True)
op("/v1/endpoints/{name}", "patch", "edit endpoint: a JSON merge patch of its settings (the queue is kept)", resp("Edited.", ref("Endpoint"), extra=[400, 401, 404, 409]), params=[name_param], body=S("object"), changes=True)
dr = resp("Deleted, but it drains first (pending=drain with events pending): it takes nothing new and goes once its queue is empty.", ref("Endpoint"), "202", extra=[400, 401, 404, 409])
dr["204"] = {"description": "Deleted."}
op("/v1/endpoints/{name}", "delete", "delete endpoint: refused while events are pending unless pending=drain or pending=purge", dr, params=[name_param, {"name": "pending", "in": "query", "schema": S("string", enum=["refuse","drain","purge"], default="refuse")}], changes=True)
for action, what in [("pause", "pause endpoint: nothing is sent; new events are still queued within its share"), ("resume", "resume endpoint"), ("enable", "enable endpoint: send again after a 410 Gone disabled it")]:
    op(f"/v1/endpoints/{{name}}/{action}", "post", what, resp("The endpoint now.", ref("Endpoint"), extra=[401, 404]), params=[name_param], changes=True)
op("/v1/endpoints/{name}/test", "post", "test endpoint: send one sample event now (not through the outbox)", resp("What the receiver answered.", ref("TestResult"), extra=[401, 404, 409]), params=[name_param], changes=True)
op("/v1/outbox", "get", "outbox: pending events and dead letters per endpoint", resp("The outbox.", ref("OutboxStatus")))
op("/v1/outbox/events", "get", "outbox events: pending events or dead letters, oldest first", resp("The events.", S("object", required=["events"], properties={"events": S("array", items=ref("OutboxEvent"))}), extra=[400, 404]),
   params=[{"name": "endpoint", "in": "query", "schema": S("string")}, {"name": "dead", "in": "query", "schema": S("boolean")}, {"name": "type", "in": "query", "schema": S("string"), "description": "An event type or pattern."}, limit,
           {"name": "offset", "in": "query", "schema": S("integer", minimum=0, maximum=10000000, default=0), "description": "Skip this many matching events first (to page through a large outbox)."}])
op("/v1/outbox/replay", "post", "replay: queue dead letters again (same event ids); never one whose record is damaged on disk (reason `damaged`, or a body damaged after it was given up on: all_dead passes over it, 409 when it is the one named)", resp("How many.", S("object", required=["replayed", "damaged_skipped"], properties={"replayed": S("integer"), "damaged_skipped": S("integer", description="Dead letters passed over: damaged on disk, they cannot be sent.")}), extra=[400, 401, 404, 409]),
   body=S("object", properties={"event_id": S("string"), "all_dead": S("boolean"), "endpoint": S("string")}), changes=True)
op("/v1/outbox/purge", "post", "purge: delete an endpoint's pending events (or dead letters) for good", resp("How many.", S("object", required=["purged"], properties={"purged": S("integer")}), extra=[400, 401, 404]),
   body=S("object", required=["endpoint"], properties={"endpoint": S("string"), "dead": S("boolean")}), changes=True)
dparams = [{"name": "endpoint", "in": "query", "schema": S("string")}, {"name": "event", "in": "query", "schema": S("string"), "description": "An event id."}, {"name": "status", "in": "query", "schema": S("string"), "description": "ok, failed, or an HTTP status."}, {"name": "device", "in": "query", "schema": S("string"), "description": "Only this device's events."}, {"name": "workspace", "in": "query", "schema": S("string"), "description": "Only this workspace's events."}]
op("/v1/deliveries", "get", "deliveries: the delivery log, latest last", resp("The attempts.", S("object", required=["deliveries"], properties={"deliveries": S("array", items=ref("Delivery"))}), extra=[400]), params=dparams + [limit])
op("/v1/deliveries/{event_id}", "get", "delivery: one event's attempts, and the request sent and the answer while they are kept", resp("The event's deliveries.", ref("DeliveryDetail"), extra=[404]),
   params=[{"name": "event_id", "in": "path", "required": True, "schema": S("string")}, {"name": "endpoint", "in": "query", "schema": S("string"), "description": "Only its deliveries to this endpoint."}])
op("/v1/deliveries/stream", "get", "delivery stream: every attempt as it happens (server-sent events: `event: delivery`, data a Delivery; `event: lagged` when some were missed)", {"200": {"description": "An event stream.", "content": {"text/event-stream": {"schema": S("string")}}}, "400": err, "503": err}, params=dparams)
push_responses = {**resp("Taken: an action accepted (its state), a booking kept or ended.", {"oneOf": [ref("Action"), S("object")]}, "202", extra=[400, 401, 404, 422, 429, 503]),
                  **resp("An action whose id is known already: what became of it; nothing is done again.", ref("Action"))}
op("/v1/commands", "post", "push command: upstream's command to this gateway (its own listener, upstream.push.listen), answered once what became of it is durable. 400 names the field; 404 an unknown device (the action is rejected and told) or workspace; 422 an action its class does not take; 429 with Retry-After when too much is pending; 401 not signed, stale or replayed. Only a 2xx uses up the webhook-id: any other answer may be retried with the same one.",
   push_responses, body=ref("Command"))
P["/v1/commands"]["post"]["security"] = [{"standardWebhooks": []}]
P["/v1/commands"]["servers"] = [{"url": "https://gateway.example:9480", "description": "The push listener (upstream.push.listen): loopback, or HTTPS with upstream.push.tls_cert."}]
doc["webhooks"] = {"pull": {"post": {
  "summary": "pull mode: the poll this gateway POSTs to upstream.pull.url",
  "description": "Long-polling for gateways behind NAT. The poll is signed like a pushed command (Standard Webhooks, the first of upstream.secrets). Upstream answers 200 with the commands after `cursor`, signed the same way (checked like a pushed request: tolerance, replay), holding the poll up to `wait` seconds while it has none. The gateway takes the commands in order, then keeps the answer's cursor on disk and polls again at once with it and `taken`; a command not taken for now (429) keeps the old cursor, and the same answer is asked for after 30 s (commands already taken are recognised by their ids). Any other answer (not 200, unsigned, unparseable) is retried after 1 s, doubling to a minute.",
  "security": [{"standardWebhooks": []}],
  "requestBody": {"required": True, "content": {"application/json": {"schema": ref("Poll")}}},
  "responses": {"200": {"description": "Commands (maybe none), signed.", "content": {"application/json": {"schema": ref("PollAnswer")}}}}}}}
import pathlib
out = pathlib.Path(__file__).resolve().parent.parent / "src/control/openapi.json"
out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
