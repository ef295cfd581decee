'use strict'

// event: over HTTP (/function/NAME) a function-URL event (rawPath, rawQueryString, headers,
// queryStringParameters, requestContext, body, isBase64Encoded); through the Invoke API the
// payload as sent. Return { statusCode, headers, body } for an HTTP answer, or any JSON value.
exports.handler = async (event, context) => {
  return {
    statusCode: 200,
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ message: 'Hello from Virga!', requestId: context.awsRequestId })
  }
}
