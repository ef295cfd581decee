//! AWS Signature Version 4 checks of Lambda API requests. The expected signature is computed
//! by the `aws-sigv4` crate from the request's signed headers, method, path, query and body
//! SHA-256, with the secret of the access key the request names, and compared in constant
//! time. The time in `X-Amz-Date` must be within 15 minutes of the gateway's clock, as AWS
//! requires.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use axum::http::{HeaderMap, Method};
use chrono::{DateTime, NaiveDateTime, Utc};
use subtle::ConstantTimeEq;

/// The only algorithm accepted.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far `X-Amz-Date` may be from now.
pub(crate) const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// `X-Amz-Date`'s format.
const DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// Why a signed request was refused (each maps to Lambda's exception of that name).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The header is not a complete SigV4 authorization.
    Incomplete(String),
    /// The signature (or its scope or time) is wrong.
    BadSignature(String),
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Authorization<'a> {
    /// The access key id.
    pub(crate) key_id: &'a str,
    /// `YYYYMMDD` of the scope.
    pub(crate) date: &'a str,
    /// The scope's region.
    pub(crate) region: &'a str,
    /// The scope's service.
    pub(crate) service: &'a str,
    /// Lower-case header names, `;`-separated.
    pub(crate) signed_headers: &'a str,
    /// Hex signature.
    pub(crate) signature: &'a str,
}

/// True if `value` claims to be a SigV4 authorization (whatever its shape).
pub(crate) fn is_sigv4(value: &[u8]) -> bool {
    value.starts_with(b"AWS4-")
}

/// Parse an authorization header value.
pub(crate) fn parse(value: &str) -> Result<Authorization<'_>, Refusal> {
    let incomplete = |what: &str| Refusal::Incomplete(what.to_string());
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| incomplete("Unsupported signature algorithm: only AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed_headers = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => {}
        }
    }
    let missing = |k: &str| {
        Refusal::Incomplete(format!(
            "Authorization header requires '{k}' parameter. Authorization={value}"
        ))
    };
    let credential = credential.ok_or_else(|| missing("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| missing("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| missing("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(incomplete(&format!(
            "Credential should be KEY/YYYYMMDD/REGION/SERVICE/aws4_request, not {credential:?}"
        )));
    };
    Ok(Authorization {
        key_id,
        date,
        region,
        service,
        signed_headers,
        signature,
    })
}

/// What a signature covers.
pub(crate) struct Signed<'a> {
    /// The method.
    pub(crate) method: &'a Method,
    /// Path and query as sent (percent-encoded).
    pub(crate) path_and_query: &'a str,
    /// All request headers.
    pub(crate) headers: &'a HeaderMap,
    /// Lower-case hex SHA-256 of the body.
    pub(crate) body_sha256: &'a str,
}

/// Check what can be checked of `auth` before the body is read: the service is `service`
/// and `X-Amz-Date` (in `headers`) is within [`MAX_SKEW`] of `now` and matches the scope's
/// date. Returns the signing time.
pub(crate) fn check_scope(
    auth: &Authorization<'_>,
    headers: &HeaderMap,
    service: &str,
    now: SystemTime,
) -> Result<SystemTime, Refusal> {
    let bad = |m: String| Refusal::BadSignature(m);
    if auth.service != service {
        return Err(bad(format!(
            "Credential should be scoped to correct service: '{service}'."
        )));
    }
    let Some(date) = headers.get("x-amz-date").and_then(|v| v.to_str().ok()) else {
        return Err(Refusal::Incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' \
             header."
                .into(),
        ));
    };
    let signed_at = NaiveDateTime::parse_from_str(date, DATE_FORMAT)
        .map_err(|_| {
            bad(format!(
                "X-Amz-Date {date:?} is not of the form 20150830T123600Z"
            ))
        })?
        .and_utc();
    check_time(signed_at, now)?;
    if !date.starts_with(auth.date) || auth.date.len() != 8 {
        return Err(bad(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date \
             from HTTP: '{}' != '{}', from '{date}'.",
            auth.date,
            &date[..8.min(date.len())]
        )));
    }
    Ok(signed_at.into())
}

/// Check `auth` over `req` with `secret` (the key's secret access key) at `now`, for
/// `service`: [`check_scope`], then the signature itself.
pub(crate) fn verify(
    auth: &Authorization<'_>,
    req: &Signed<'_>,
    secret: &str,
    service: &str,
    now: SystemTime,
) -> Result<(), Refusal> {
    let bad = |m: String| Refusal::BadSignature(m);
    let signed_at = check_scope(auth, req.headers, service, now)?;
    let expected = expected_signature(auth, req, secret, signed_at)?;
    if bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
        Ok(())
    } else {
        Err(bad(
            "The request signature we calculated does not match the signature you \
                 provided. Check your AWS Secret Access Key and signing method. Consult the \
                 service documentation for details."
                .into(),
        ))
    }
}

/// Refuse a signing time more than [`MAX_SKEW`] from `now` (AWS's messages).
fn check_time(signed_at: DateTime<Utc>, now: SystemTime) -> Result<(), Refusal> {
    let now: DateTime<Utc> = now.into();
    let skew = chrono::Duration::from_std(MAX_SKEW).unwrap_or_default();
    let fmt = |t: DateTime<Utc>| t.format(DATE_FORMAT).to_string();
    if signed_at < now - skew {
        return Err(Refusal::BadSignature(format!(
            "Signature expired: {} is now earlier than {} ({} - 15 min.)",
            fmt(signed_at),
            fmt(now - skew),
            fmt(now)
        )));
    }
    if signed_at > now + skew {
        return Err(Refusal::BadSignature(format!(
            "Signature not yet current: {} is still later than {} ({} + 15 min.)",
            fmt(signed_at),
            fmt(now + skew),
            fmt(now)
        )));
    }
    Ok(())
}

/// The signature `aws-sigv4` computes for the headers `auth` names.
fn expected_signature(
    auth: &Authorization<'_>,
    req: &Signed<'_>,
    secret: &str,
    time: SystemTime,
) -> Result<String, Refusal> {
    let bad = |m: String| Refusal::BadSignature(m);
    let mut headers = Vec::new();
    for name in auth.signed_headers.split(';') {
        let mut values = req.headers.get_all(name).iter().peekable();
        if values.peek().is_none() || name != name.to_ascii_lowercase() {
            return Err(bad(format!(
                "SignedHeaders names {name:?}, which the request does not have"
            )));
        }
        for v in values {
            let v = v
                .to_str()
                .map_err(|_| bad(format!("header {name} is not ASCII")))?;
            headers.push((name, v));
        }
    }
    if !auth.signed_headers.split(';').any(|h| h == "host") {
        return Err(bad("SignedHeaders must include host".into()));
    }
    let body = match req
        .headers
        .get("x-amz-content-sha256")
        .map(|v| v.as_bytes())
    {
        Some(b"UNSIGNED-PAYLOAD") => SignableBody::UnsignedPayload,
        Some(v) if v != req.body_sha256.as_bytes() => {
            return Err(bad(
                "x-amz-content-sha256 is not the SHA-256 of the body".into()
            ))
        }
        _ => SignableBody::Precomputed(req.body_sha256.to_string()),
    };
    // The host comes from the signed Host header; the URI only carries path and query.
    let uri = format!("http://localhost{}", req.path_and_query);
    let request = SignableRequest::new(req.method.as_str(), uri, headers.into_iter(), body)
        .map_err(|e| bad(format!("cannot read the request for its signature: {e}")))?;
    let mut settings = SigningSettings::default();
    // Exactly the headers the client signed: none left out.
    settings.excluded_headers = None;
    settings.percent_encoding_mode = PercentEncodingMode::Double;
    let identity =
        aws_credential_types::Credentials::new(auth.key_id, secret, None, None, "virga").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(auth.region)
        .name(auth.service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| bad(format!("cannot check the signature: {e}")))?
        .into();
    let (_, signature) = sign(request, &params)
        .map_err(|e| bad(format!("cannot check the signature: {e}")))?
        .into_parts();
    Ok(signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// AWS's published SigV4 example "get-vanilla" (the SigV4 test suite's first case).
    const VANILLA: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/\
        aws4_request, SignedHeaders=host;x-amz-date, \
        Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn vanilla_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.amazonaws.com"));
        h.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        h
    }

    fn at(s: &str) -> SystemTime {
        NaiveDateTime::parse_from_str(s, DATE_FORMAT)
            .unwrap()
            .and_utc()
            .into()
    }

    fn check(auth: &str, headers: &HeaderMap, secret: &str, now: &str) -> Result<(), Refusal> {
        let req = Signed {
            method: &Method::GET,
            path_and_query: "/",
            headers,
            body_sha256: EMPTY_SHA,
        };
        verify(&parse(auth)?, &req, secret, "service", at(now))
    }

    #[test]
    fn accepts_aws_example_signature() {
        let h = vanilla_headers();
        check(VANILLA, &h, SECRET, "20150830T123600Z").unwrap();
        // Within the 15 minutes either way.
        check(VANILLA, &h, SECRET, "20150830T125000Z").unwrap();
        check(VANILLA, &h, SECRET, "20150830T122200Z").unwrap();
    }

    #[test]
    fn refuses_wrong_secret_body_or_headers() {
        let h = vanilla_headers();
        let e = check(VANILLA, &h, "wrong", "20150830T123600Z").unwrap_err();
        assert!(
            matches!(&e, Refusal::BadSignature(m) if m.contains("does not match")),
            "{e:?}"
        );
        let req = Signed {
            method: &Method::GET,
            path_and_query: "/",
            headers: &h,
            body_sha256: "00",
        };
        let auth = parse(VANILLA).unwrap();
        let at_time = at("20150830T123600Z");
        assert!(verify(&auth, &req, SECRET, "service", at_time).is_err());
        let mut changed = h.clone();
        changed.insert("host", HeaderValue::from_static("evil.example"));
        assert!(check(VANILLA, &changed, SECRET, "20150830T123600Z").is_err());
        let req = Signed {
            method: &Method::POST,
            ..req
        };
        assert!(verify(&auth, &req, SECRET, "service", at_time).is_err());
    }

    #[test]
    fn refuses_stale_or_future_times_with_aws_messages() {
        let h = vanilla_headers();
        let e = check(VANILLA, &h, SECRET, "20150830T125101Z").unwrap_err();
        assert_eq!(
            e,
            Refusal::BadSignature(
                "Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z \
                 (20150830T125101Z - 15 min.)"
                    .into()
            )
        );
        let e = check(VANILLA, &h, SECRET, "20150830T122059Z").unwrap_err();
        assert!(
            matches!(&e, Refusal::BadSignature(m) if m.starts_with("Signature not yet current")),
            "{e:?}"
        );
    }

    #[test]
    fn refuses_other_services_and_malformed_headers() {
        let h = vanilla_headers();
        let req = Signed {
            method: &Method::GET,
            path_and_query: "/",
            headers: &h,
            body_sha256: EMPTY_SHA,
        };
        let e = verify(
            &parse(VANILLA).unwrap(),
            &req,
            SECRET,
            "lambda",
            at("20150830T123600Z"),
        )
        .unwrap_err();
        assert!(matches!(e, Refusal::BadSignature(m) if m.contains("'lambda'")));
        for bad in [
            "AWS4-HMAC-SHA512 Credential=a/b/c/d/aws4_request",
            "AWS4-HMAC-SHA256 Credential=a/20150830/r/s/aws4_request, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=a/r/s, SignedHeaders=host, Signature=00",
        ] {
            assert!(matches!(parse(bad), Err(Refusal::Incomplete(_))), "{bad}");
        }
        let a = parse(VANILLA).unwrap();
        assert_eq!(
            (a.key_id, a.region, a.service),
            ("AKIDEXAMPLE", "us-east-1", "service")
        );
        // A header the client says it signed must be there.
        let unsigned = VANILLA.replace("host;x-amz-date", "host;x-amz-date;x-extra");
        assert!(check(&unsigned, &h, SECRET, "20150830T123600Z").is_err());
    }
}
