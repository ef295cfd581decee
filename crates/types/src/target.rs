//! The target of one invocation, parsed once from the request path and handed down: the
//! function, its namespace and the path (with query) the function is called with. The sync
//! path parses it from `/function/NAME[.NS][/path]`, the async path from
//! `/async-function/...` and stores it with the queued call, so a delivery never parses a
//! path again.

use crate::{
    function_key, namespace_or_default, split_key, validate_name, validate_namespace, Invalid,
};

/// Which function a call is for, and what it asks of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Function name.
    pub function: String,
    /// Its namespace.
    pub namespace: String,
    /// The function's platform-wide key ([`function_key`]): what the provider, the queue, the
    /// logs and the metrics know it by.
    pub key: String,
    /// The path after the function's name, with the query: `/a/b?x=1` (at least `/`).
    pub path: String,
}

impl Target {
    /// The target of `rest`, the part of a route after its prefix (`NAME[.NS][/path]`), with
    /// the request's `query`.
    pub fn parse(rest: &str, query: Option<&str>) -> Result<Target, Invalid> {
        let (full, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (function, namespace) = full.split_once('.').unwrap_or((full, ""));
        validate_name("function name", function)?;
        validate_namespace(namespace)?;
        let path = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let namespace = namespace_or_default(namespace);
        Ok(Target {
            function: function.to_string(),
            namespace: namespace.to_string(),
            key: function_key(function, namespace),
            path,
        })
    }

    /// The target of a call stored for the function keyed `key` with `path` (as
    /// [`Target::path`]).
    pub fn stored(key: &str, path: &str) -> Target {
        let (function, namespace) = split_key(key);
        Target {
            function: function.to_string(),
            namespace: namespace.to_string(),
            key: key.to_string(),
            path: path.to_string(),
        }
    }
}

/// Header names the platform sets or reads, in one place (lower case, as HTTP/2 and
/// `HeaderName::from_static` want them).
pub mod headers {
    /// The call's id, given by the caller or generated (OpenFaaS's `X-Call-Id`).
    pub const X_CALL_ID: &str = "x-call-id";
    /// When the gateway started the call, in Unix nanoseconds.
    pub const X_START_TIME: &str = "x-start-time";
    /// How long the call took, in seconds.
    pub const X_DURATION_SECONDS: &str = "x-duration-seconds";
    /// Where an async call's result is POSTed.
    pub const X_CALLBACK_URL: &str = "x-callback-url";
    /// A callback's function name.
    pub const X_FUNCTION_NAME: &str = "x-function-name";
    /// A callback's function status code.
    pub const X_FUNCTION_STATUS: &str = "x-function-status";
    /// The host the caller asked for, as the gateway saw it.
    pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
    /// Marks a call to a Lambda function as a raw invoke (the body is the event), not a
    /// function-URL request; set by the gateway's Invoke API.
    pub const X_VIRGA_LAMBDA_INVOKE: &str = "x-virga-lambda-invoke";
    /// Lambda: the function failed (`Unhandled`); the body is the error JSON.
    pub const X_AMZ_FUNCTION_ERROR: &str = "x-amz-function-error";
    /// Lambda: `Tail` asks for the call's last log lines in [`X_AMZ_LOG_RESULT`].
    pub const X_AMZ_LOG_TYPE: &str = "x-amz-log-type";
    /// Lambda: base64 of the last 4 KB of the call's log.
    pub const X_AMZ_LOG_RESULT: &str = "x-amz-log-result";
    /// Lambda: the caller's client context, base64 JSON.
    pub const X_AMZ_CLIENT_CONTEXT: &str = "x-amz-client-context";
    /// Lambda: the version that ran (`$LATEST`).
    pub const X_AMZ_EXECUTED_VERSION: &str = "x-amz-executed-version";
    /// Lambda: the request id of a call.
    pub const X_AMZN_REQUEST_ID: &str = "x-amzn-requestid";
    /// Lambda: the exception name of an API error (`ResourceNotFoundException`, ...).
    pub const X_AMZN_ERROR_TYPE: &str = "x-amzn-errortype";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_function_namespace_path_and_query() {
        let t = Target::parse("echo", None).unwrap();
        assert_eq!((t.function.as_str(), t.path.as_str()), ("echo", "/"));
        let t = Target::parse("echo.openfaas-fn/a/b", Some("x=1&y")).unwrap();
        assert_eq!(
            (t.function.as_str(), t.namespace.as_str(), t.path.as_str()),
            ("echo", "openfaas-fn", "/a/b?x=1&y")
        );
        assert_eq!(t.key, "echo");
        assert_eq!(Target::parse("echo/", None).unwrap().path, "/");
        let t = Target::parse("echo.team-a/a", None).unwrap();
        assert_eq!(
            (t.namespace.as_str(), t.key.as_str()),
            ("team-a", "echo.team-a")
        );
        assert_eq!(
            Target::stored(&t.key, "/"),
            Target {
                path: "/".into(),
                ..t
            }
        );
        assert!(Target::parse("echo.Bad_NS/a", None).is_err());
        assert!(Target::parse("Bad_Name", None).is_err());
        assert!(Target::parse("", None).is_err());
    }
}
