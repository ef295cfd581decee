import json


def handle(event, context):
    """Greets the caller: ?name=X in the query, or a JSON body {"name": X}."""
    name = event.query.get("name")
    if not name and event.body:
        try:
            name = json.loads(event.body).get("name")
        except (ValueError, AttributeError):
            return {"statusCode": 400, "body": {"error": "body must be JSON like {\"name\": \"Ada\"}"}}
    return {
        "statusCode": 200,
        "body": {"message": f"Hello, {name or 'world'}!", "method": event.method, "path": event.path},
    }
