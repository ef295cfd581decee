//! Reading an OpenFaaS stack file (`stack.yml`) as faas-cli does: `${VAR}` and
//! `${VAR:-default}` are substituted from the environment first, unknown fields are
//! ignored, scalar maps accept numbers and booleans, `environment_file` entries are read
//! relative to the stack file, and YAML errors name the file, field and line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use virga_types::{FunctionDeployment, FunctionResources};

/// A loaded stack file.
#[derive(Debug, Clone)]
pub struct Stack {
    /// The file it came from.
    pub path: PathBuf,
    /// Its directory: handlers and environment files are relative to it.
    pub dir: PathBuf,
    /// The `provider` section.
    pub provider: Provider,
    /// Functions by name.
    pub functions: BTreeMap<String, StackFunction>,
}

/// `provider:` of a stack file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Provider {
    /// Gateway URL.
    #[serde(default, deserialize_with = "scalar")]
    pub gateway: String,
}

/// One entry of `functions:`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StackFunction {
    /// Template language; functions without one are deployed from `image` only.
    #[serde(default, deserialize_with = "scalar")]
    pub lang: String,
    /// Handler directory, relative to the stack file.
    #[serde(default, deserialize_with = "scalar")]
    pub handler: String,
    /// Image name (used as is for functions without `lang`).
    #[serde(default, deserialize_with = "scalar")]
    pub image: String,
    /// Command the watchdog runs, overriding the template's.
    #[serde(default, deserialize_with = "scalar")]
    pub fprocess: String,
    /// Namespace.
    #[serde(default, deserialize_with = "scalar")]
    pub namespace: String,
    /// Environment variables.
    #[serde(default, deserialize_with = "scalar_map")]
    pub environment: BTreeMap<String, String>,
    /// YAML files with an `environment:` map, relative to the stack file.
    #[serde(default, deserialize_with = "string_list")]
    pub environment_file: Vec<String>,
    /// Secret names.
    #[serde(default, deserialize_with = "string_list")]
    pub secrets: Vec<String>,
    /// Labels.
    #[serde(default, deserialize_with = "opt_scalar_map")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations.
    #[serde(default, deserialize_with = "opt_scalar_map")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Option<Resources>,
    /// Resource requests.
    #[serde(default)]
    pub requests: Option<Resources>,
    /// Placement constraints.
    #[serde(default, deserialize_with = "string_list")]
    pub constraints: Vec<String>,
    /// Read-only root filesystem.
    #[serde(default)]
    pub readonly_root_filesystem: bool,
    /// Build arguments (faas-cli's); `BASE_IMAGE` names the base of an OCI build.
    #[serde(default, deserialize_with = "scalar_map")]
    pub build_args: BTreeMap<String, String>,
}

/// `limits:` / `requests:`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resources {
    /// Memory, e.g. `128M`.
    #[serde(default, deserialize_with = "scalar")]
    pub memory: String,
    /// CPU, e.g. `0.5` or `500m`.
    #[serde(default, deserialize_with = "scalar")]
    pub cpu: String,
}

#[derive(Deserialize)]
struct StackFile {
    #[serde(default)]
    provider: Option<Provider>,
    #[serde(default)]
    functions: Option<BTreeMap<String, StackFunction>>,
}

#[derive(Deserialize)]
struct EnvironmentFile {
    #[serde(default, deserialize_with = "scalar_map")]
    environment: BTreeMap<String, String>,
}

/// The stack files looked for when none is given, in faas-cli's order.
const DEFAULT_FILES: [&str; 2] = ["stack.yaml", "stack.yml"];

/// The stack file to use when `-f` is not given: `stack.yaml`, else `stack.yml` (as faas-cli
/// looks for them); `stack.yaml` when neither exists.
pub fn default_file(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| {
        DEFAULT_FILES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FILES[0]))
    })
}

impl Stack {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<Stack> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read stack file {}: create one with `virga new NAME --lang LANG` or pass -f",
                path.display()
            )
        })?;
        Stack::parse(path, &text, |k| std::env::var(k).ok())
    }

    /// Parse stack text as if read from `path`, looking variables up with `env`.
    pub fn parse(path: &Path, text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Stack> {
        let text = substitute_env(text, env);
        let file: StackFile =
            serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let functions = file.functions.unwrap_or_default();
        for name in functions.keys() {
            virga_types::validate_name("functions", name)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Stack {
            path: path.to_path_buf(),
            dir,
            provider: file.provider.unwrap_or_default(),
            functions,
        })
    }

    /// The functions `filter` selects (all without one); `*` in the filter matches anything.
    pub fn select(&self, filter: Option<&str>) -> Result<Vec<(&str, &StackFunction)>> {
        let chosen: Vec<_> = self
            .functions
            .iter()
            .filter(|(name, _)| filter.is_none_or(|f| glob_match(f, name)))
            .map(|(n, f)| (n.as_str(), f))
            .collect();
        if chosen.is_empty() {
            match filter {
                Some(f) => bail!(
                    "no function in {} matches {f:?} (it has: {})",
                    self.path.display(),
                    self.names()
                ),
                None => bail!("{} lists no functions", self.path.display()),
            }
        }
        Ok(chosen)
    }

    fn names(&self) -> String {
        let names: Vec<&str> = self.functions.keys().map(String::as_str).collect();
        names.join(", ")
    }

    /// A path in the stack file relative to its directory.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        let p = Path::new(rel);
        if p.is_absolute() || self.dir == Path::new(".") {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// The environment of `f`: its `environment_file`s in order, then `environment`.
    pub fn environment(&self, name: &str, f: &StackFunction) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for rel in &f.environment_file {
            let path = self.resolve(rel);
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "{}: functions.{name}.environment_file: cannot read {}",
                    self.path.display(),
                    path.display()
                )
            })?;
            let file: EnvironmentFile = serde_yaml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            env.extend(file.environment);
        }
        env.extend(f.environment.clone());
        Ok(env)
    }

    /// The deployment request for function `name` with the given image.
    pub fn deployment(
        &self,
        name: &str,
        f: &StackFunction,
        image: &str,
    ) -> Result<FunctionDeployment> {
        let res = |r: &Option<Resources>| {
            r.as_ref().map(|r| FunctionResources {
                memory: r.memory.clone(),
                cpu: r.cpu.clone(),
            })
        };
        Ok(FunctionDeployment {
            service: name.to_string(),
            image: image.to_string(),
            namespace: f.namespace.clone(),
            env_process: f.fprocess.clone(),
            env_vars: self.environment(name, f)?,
            constraints: f.constraints.clone(),
            secrets: f.secrets.clone(),
            labels: f.labels.clone(),
            annotations: f.annotations.clone(),
            limits: res(&f.limits),
            requests: res(&f.requests),
            read_only_root_filesystem: f.readonly_root_filesystem,
            registry_auth: String::new(),
        })
    }
}

/// Replace `${VAR}`, `${VAR:-default}` and `${VAR-default}` like faas-cli's envsubst.
/// `:-` uses the default when VAR is unset or empty, `-` only when unset.
pub fn substitute_env(text: &str, env: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expr = &after[..end];
        let name_len = expr
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expr.len());
        let (name, op) = expr.split_at(name_len);
        let value = env(name);
        let replaced = if name.is_empty() {
            None
        } else if op.is_empty() {
            Some(value.unwrap_or_default())
        } else if let Some(default) = op.strip_prefix(":-") {
            Some(
                value
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| default.to_string()),
            )
        } else {
            op.strip_prefix('-')
                .map(|default| value.unwrap_or_else(|| default.to_string()))
        };
        match replaced {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Match `name` against a pattern where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .any(|i| glob_match(tail, &rest[i..]))
        }
    }
}

/// A YAML scalar as a string (numbers and booleans as written; null as empty).
struct ScalarString(String);

impl<'de> Deserialize<'de> for ScalarString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Null => Ok(ScalarString(String::new())),
            serde_yaml::Value::String(s) => Ok(ScalarString(s)),
            serde_yaml::Value::Bool(b) => Ok(ScalarString(b.to_string())),
            serde_yaml::Value::Number(n) => Ok(ScalarString(n.to_string())),
            other => Err(D::Error::custom(format!(
                "expected a string, found {}",
                Kind(&other)
            ))),
        }
    }
}

struct Kind<'a>(&'a serde_yaml::Value);

impl fmt::Display for Kind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            serde_yaml::Value::Sequence(_) => "a list",
            serde_yaml::Value::Mapping(_) => "a map",
            _ => "a tagged value",
        })
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(ScalarString::deserialize(d)?.0)
}

fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(opt_scalar_map(d)?.unwrap_or_default())
}

fn opt_scalar_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let map: Option<BTreeMap<String, ScalarString>> = Option::deserialize(d)?;
    Ok(map.map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect()))
}

fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list: Option<Vec<ScalarString>> = Option::deserialize(d)?;
    Ok(list.unwrap_or_default().into_iter().map(|s| s.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = r#"
version: 1.0
provider:
  name: openfaas
  gateway: ${GW:-http://127.0.0.1:8080}
functions:
  hello:
    lang: python3-http
    handler: ./hello
    image: ${REGISTRY}/hello:latest
    fprocess: python3 index.py
    environment:
      write_timeout: 10s
      RETRIES: 3
      DEBUG: true
    environment_file:
      - env.yml
    secrets: [api-key]
    labels:
      com.openfaas.scale.min: 2
    limits:
      memory: 128M
      cpu: 0.5
    readonly_root_filesystem: true
    unknown_field: ignored
  plain:
    image: virga.local/plain@sha256:abc
"#;

    #[test]
    fn parses_openfaas_stack_with_env_substitution() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("env.yml"),
            "environment:\n  FROM_FILE: yes-file\n  RETRIES: 1\n",
        )
        .unwrap();
        let path = dir.path().join("stack.yml");
        let env = |k: &str| (k == "REGISTRY").then(|| "reg.example".to_string());
        let stack = Stack::parse(&path, STACK, env).unwrap();
        assert_eq!(stack.provider.gateway, "http://127.0.0.1:8080");
        let f = &stack.functions["hello"];
        assert_eq!(f.image, "reg.example/hello:latest");
        assert_eq!(f.environment["RETRIES"], "3");
        assert_eq!(f.environment["DEBUG"], "true");
        assert_eq!(f.labels.as_ref().unwrap()["com.openfaas.scale.min"], "2");
        let d = stack.deployment("hello", f, "img").unwrap();
        assert_eq!(d.env_vars["FROM_FILE"], "yes-file");
        assert_eq!(d.env_vars["RETRIES"], "3", "environment wins over files");
        assert_eq!(d.secrets, vec!["api-key"]);
        assert_eq!(d.limits.as_ref().unwrap().cpu, "0.5");
        assert_eq!(d.env_process, "python3 index.py");
        assert!(d.read_only_root_filesystem);
        assert!(stack.functions["plain"].lang.is_empty());
        assert_eq!(stack.select(Some("pl*")).unwrap().len(), 1);
        assert!(stack.select(Some("nope")).is_err());
    }

    #[test]
    fn substitutes_like_envsubst() {
        let env = |k: &str| match k {
            "A" => Some("a".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(substitute_env("${A}-${B}-${B:-d}", env), "a--d");
        assert_eq!(substitute_env("${EMPTY:-d}|${EMPTY-d}", env), "d|");
        assert_eq!(substitute_env("$A ${ unclosed", env), "$A ${ unclosed");
    }

    #[test]
    fn malformed_yaml_names_file_field_and_line() {
        let bad = "functions:\n  hello:\n    lang: [python\n";
        let err = Stack::parse(Path::new("my-stack.yml"), bad, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("my-stack.yml"), "{err}");
        assert!(err.contains("line"), "{err}");
        let wrong_type = "functions:\n  hello:\n    secrets:\n      a: b\n";
        let err = Stack::parse(Path::new("s.yml"), wrong_type, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("functions.hello.secrets"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        let bad_name = "functions:\n  Hello_World:\n    lang: bash\n";
        assert!(Stack::parse(Path::new("s.yml"), bad_name, |_| None).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "x"));
        assert!(glob_match("a*c", "abbc"));
        assert!(!glob_match("a*c", "abcd"));
    }
}
