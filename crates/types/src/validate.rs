//! Validation of names and deployments, with messages that say which field is wrong.

use thiserror::Error;

use crate::{
    check_command, check_watchdog_env, parse_cpu, parse_memory, FunctionDeployment, ScalingPolicy,
    Secret, DEFAULT_NAMESPACE, MAX_REPLICAS,
};

/// A request body that is well-formed JSON but not acceptable.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// The offending field, as named in the JSON body.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Check that `name` is a DNS-1123 label: 1-63 of `a-z 0-9 -`, starting and ending alphanumeric.
pub fn validate_name(field: &str, name: &str) -> Result<(), Invalid> {
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if bytes.len() > 63 {
        return Err(invalid(
            field,
            format!("{name:?} is longer than 63 characters"),
        ));
    }
    if !bytes.iter().all(|&b| ok_char(b)) || bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
        return Err(invalid(
            field,
            format!(
                "{name:?} is not a valid name: use lower-case letters, digits and '-', \
                 starting and ending with a letter or digit (a DNS-1123 label)"
            ),
        ));
    }
    Ok(())
}

/// Namespaces that cannot be created: Kubernetes's own and the platform's.
pub const RESERVED_NAMESPACES: &[&str] = &[
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "openfaas",
    "virga",
    "system",
];

/// Check a namespace as a request names it: empty (the default) or a DNS-1123 label. Whether
/// it exists is the store's to say.
pub fn validate_namespace(ns: &str) -> Result<(), Invalid> {
    if ns.is_empty() {
        return Ok(());
    }
    validate_name("namespace", ns)
}

/// Check the name of a namespace to create: a DNS-1123 label, not reserved.
pub fn validate_new_namespace(ns: &str) -> Result<(), Invalid> {
    validate_name("name", ns)?;
    if RESERVED_NAMESPACES.contains(&ns) || ns.starts_with("kube-") {
        return Err(invalid(
            "name",
            format!("{ns:?} is reserved: choose another namespace name"),
        ));
    }
    Ok(())
}

/// The namespace a request means: `ns`, or the default one when it names none.
pub fn namespace_or_default(ns: &str) -> &str {
    if ns.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        ns
    }
}

/// The platform-wide key of function (or secret) `name` in namespace `ns`, the form
/// `/function/` takes: `name` in the default namespace, `name.ns` in any other. Names and
/// namespaces are DNS-1123 labels, so the dot is never ambiguous.
pub fn function_key(name: &str, ns: &str) -> String {
    let ns = namespace_or_default(ns);
    if ns == DEFAULT_NAMESPACE {
        name.to_string()
    } else {
        format!("{name}.{ns}")
    }
}

/// The name and namespace of a key made by [`function_key`].
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('.').unwrap_or((key, DEFAULT_NAMESPACE))
}

/// Check a deployment body and fill in the default namespace.
pub fn validate_deployment(d: &mut FunctionDeployment) -> Result<(), Invalid> {
    validate_name("service", &d.service)?;
    validate_namespace(&d.namespace)?;
    d.namespace = namespace_or_default(&d.namespace).to_string();
    if d.image.is_empty() && d.env_process.trim().is_empty() {
        return Err(invalid(
            "image",
            "give an image (a registry reference, or a bundle from `virga build`) or an \
             envProcess command",
        ));
    }
    if d.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "image",
            format!("{:?} is not an image reference", d.image),
        ));
    }
    for s in &d.secrets {
        validate_name("secrets", s)?;
    }
    for (field, r) in [("limits", &d.limits), ("requests", &d.requests)] {
        if let Some(r) = r {
            if !r.memory.is_empty() {
                parse_memory(&r.memory).map_err(|e| invalid(&format!("{field}.memory"), e))?;
            }
            if !r.cpu.is_empty() {
                parse_cpu(&r.cpu).map_err(|e| invalid(&format!("{field}.cpu"), e))?;
            }
        }
    }
    ScalingPolicy::check_labels(d.labels.as_ref())?;
    for k in d.env_vars.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(invalid(
                "envVars",
                format!("{k:?} is not a valid variable name"),
            ));
        }
    }
    check_command("envProcess", &d.env_process)?;
    crate::ConnectionLimits::from_annotations(d.annotations.as_ref())?;
    check_watchdog_env("envVars", &d.env_vars)
}

/// Check a replica count asked for `function` against its `com.openfaas.scale.max` (`max`)
/// and the platform's cap.
pub fn validate_replicas(function: &str, replicas: u64, max: u64) -> Result<(), Invalid> {
    let max = max.min(MAX_REPLICAS);
    if replicas > max {
        return Err(invalid(
            "replicas",
            format!(
                "{replicas} is more than function {function:?} may have ({max}: its \
                 com.openfaas.scale.max label, at most {MAX_REPLICAS})"
            ),
        ));
    }
    Ok(())
}

/// Check a secret body and fill in the default namespace.
pub fn validate_secret(s: &mut Secret) -> Result<(), Invalid> {
    validate_name("name", &s.name)?;
    validate_namespace(&s.namespace)?;
    s.namespace = namespace_or_default(&s.namespace).to_string();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_1123() {
        for good in ["a", "hello", "my-fn-2", &"x".repeat(63)] {
            assert!(validate_name("service", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            "a/b",
            "Hello",
            "-a",
            "a-",
            "a_b",
            "a.b",
            &"x".repeat(64),
        ] {
            assert!(validate_name("service", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn namespaces_and_keys() {
        assert!(validate_new_namespace("team-a").is_ok());
        for bad in [
            "kube-system",
            "kube-x",
            "openfaas",
            "default",
            "Team",
            "a.b",
            "",
        ] {
            assert!(validate_new_namespace(bad).is_err(), "{bad}");
        }
        assert_eq!(function_key("f", ""), "f");
        assert_eq!(function_key("f", DEFAULT_NAMESPACE), "f");
        assert_eq!(function_key("f", "team-a"), "f.team-a");
        assert_eq!(split_key("f.team-a"), ("f", "team-a"));
        assert_eq!(split_key("f"), ("f", DEFAULT_NAMESPACE));
    }

    #[test]
    fn deployment_needs_image_or_process() {
        let mut d = FunctionDeployment {
            service: "f".into(),
            ..Default::default()
        };
        assert_eq!(validate_deployment(&mut d).unwrap_err().field, "image");
        d.env_process = "cat".into();
        validate_deployment(&mut d).unwrap();
        assert_eq!(d.namespace, DEFAULT_NAMESPACE);
        d.image = "nginx:latest".into();
        validate_deployment(&mut d).unwrap();
        d.env_process.clear();
        // A registry reference alone is an image function (pulled by the gateway).
        validate_deployment(&mut d).unwrap();
        d.image = "nginx latest".into();
        assert_eq!(validate_deployment(&mut d).unwrap_err().field, "image");
    }

    #[test]
    fn deployment_checks_watchdog_variables_and_nul_bytes() {
        let mut d = FunctionDeployment {
            service: "f".into(),
            env_process: "cat".into(),
            ..Default::default()
        };
        d.env_vars.insert("exec_timeout".into(), "banana".into());
        assert_eq!(
            validate_deployment(&mut d).unwrap_err().field,
            "envVars.exec_timeout"
        );
        d.env_vars.clear();
        d.env_process = "cat\0x".into();
        assert_eq!(validate_deployment(&mut d).unwrap_err().field, "envProcess");
    }

    #[test]
    fn replicas_stay_within_the_label_and_the_cap() {
        validate_replicas("f", 20, 20).unwrap();
        validate_replicas("f", 0, 1).unwrap();
        assert_eq!(
            validate_replicas("f", 21, 20).unwrap_err().field,
            "replicas"
        );
        let e = validate_replicas("f", u64::MAX, u64::MAX).unwrap_err();
        assert!(e.reason.contains(&MAX_REPLICAS.to_string()), "{e}");
    }
}
