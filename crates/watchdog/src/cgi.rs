//! Classic-watchdog CGI variables (`Http_Method`, `Http_Path`, `Http_<Header>`,
//! ...) that describe the current request to a per-request function process.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use hyper::header::{HeaderMap, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Method, Uri};

/// Converts a header name to Go's canonical MIME form (`x-call-id` -> `X-Call-Id`).
pub fn canonical_header_key(name: &str) -> String {
    // Go leaves keys with non-token bytes untouched.
    if !name.bytes().all(is_token_byte) {
        return name.to_owned();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Environment variable name for a request header (`x-call-id` -> `Http_X_Call_Id`).
pub fn header_env_name(name: &str) -> String {
    format!("Http_{}", canonical_header_key(name).replace('-', "_"))
}

/// Builds the `Http_*` variables for one request.
///
/// `body_len` is the exact body length when the body was already read;
/// otherwise the Content-Length header is used (-1 when chunked, like Go).
pub fn cgi_env(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body_len: Option<u64>,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = Vec::with_capacity(headers.keys_len() + 4);
    // One entry per distinct header (first value wins, as in Go's v[0]).
    for name in headers.keys() {
        if let Some(value) = headers.get(name) {
            env.push((
                header_env_name(name.as_str()).into(),
                OsString::from_vec(value.as_bytes().to_vec()),
            ));
        }
    }
    env.push(("Http_Method".into(), method.as_str().into()));
    let content_length = match body_len {
        Some(n) => n as i64,
        None => match headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            Some(n) => n,
            None if headers.contains_key(TRANSFER_ENCODING) => -1,
            None => 0,
        },
    };
    env.push((
        "Http_ContentLength".into(),
        content_length.to_string().into(),
    ));
    let path = uri.path();
    if !path.is_empty() {
        env.push(("Http_Path".into(), path.into()));
    }
    if let Some(query) = uri.query().filter(|q| !q.is_empty()) {
        env.push(("Http_Query".into(), query.into()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn canonical_keys() {
        assert_eq!(canonical_header_key("x-call-id"), "X-Call-Id");
        assert_eq!(canonical_header_key("content-type"), "Content-Type");
        assert_eq!(canonical_header_key("ACCEPT"), "Accept");
        assert_eq!(canonical_header_key("x-a--b"), "X-A--B");
        assert_eq!(canonical_header_key("bad key"), "bad key");
        assert_eq!(header_env_name("x-call-id"), "Http_X_Call_Id");
        assert_eq!(header_env_name("content-type"), "Http_Content_Type");
    }

    fn lookup<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a str> {
        env.iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.to_str())
    }

    #[test]
    fn builds_request_env() {
        let mut headers = HeaderMap::new();
        headers.insert("x-call-id", HeaderValue::from_static("abc"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("content-length", HeaderValue::from_static("5"));
        headers.append("accept", HeaderValue::from_static("a"));
        headers.append("accept", HeaderValue::from_static("b"));
        let uri: Uri = "/fn/path?a=1&b=two".parse().unwrap();
        let env = cgi_env(&Method::POST, &uri, &headers, None);
        assert_eq!(lookup(&env, "Http_Method"), Some("POST"));
        assert_eq!(lookup(&env, "Http_Path"), Some("/fn/path"));
        assert_eq!(lookup(&env, "Http_Query"), Some("a=1&b=two"));
        assert_eq!(lookup(&env, "Http_X_Call_Id"), Some("abc"));
        assert_eq!(lookup(&env, "Http_Content_Type"), Some("text/plain"));
        assert_eq!(lookup(&env, "Http_ContentLength"), Some("5"));
        assert_eq!(lookup(&env, "Http_Accept"), Some("a"));
        assert_eq!(env.iter().filter(|(k, _)| k == "Http_Accept").count(), 1);
    }

    #[test]
    fn content_length_variants() {
        let uri: Uri = "/".parse().unwrap();
        let env = cgi_env(&Method::GET, &uri, &HeaderMap::new(), None);
        assert_eq!(lookup(&env, "Http_ContentLength"), Some("0"));
        assert_eq!(lookup(&env, "Http_Query"), None);
        let mut chunked = HeaderMap::new();
        chunked.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let env = cgi_env(&Method::POST, &uri, &chunked, None);
        assert_eq!(lookup(&env, "Http_ContentLength"), Some("-1"));
        let env = cgi_env(&Method::POST, &uri, &chunked, Some(42));
        assert_eq!(lookup(&env, "Http_ContentLength"), Some("42"));
    }
}
