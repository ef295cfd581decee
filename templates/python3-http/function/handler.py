def handle(event, context):
    """Handle one HTTP request.

    event: .body (bytes), .headers, .method, .query (dict), .path
    context: .hostname
    Return a dict with optional "statusCode", "body" and "headers".
    """
    return {"statusCode": 200, "body": "Hello from Virga!"}
