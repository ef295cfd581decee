import json


def handler(event, context):
    """Handle one Lambda event.

    Over HTTP (/function/NAME) event is a function-URL event (rawPath, rawQueryString,
    headers, queryStringParameters, requestContext, body, isBase64Encoded); through the
    Invoke API it is the payload as sent. context is awslambdaric's LambdaContext.
    Return {"statusCode", "headers", "body"} for an HTTP answer, or any JSON value.
    """
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"message": "Hello from Virga!", "requestId": context.aws_request_id}),
    }
