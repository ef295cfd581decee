//! Namespaces in the CLI: `virga namespace create|get|update|remove|list` (faas-cli's
//! `namespace` commands, over OpenFaaS's `/system/namespace` routes), and the `-n/--namespace`
//! option of the commands on functions, secrets and logs, resolved as faas-cli does: the flag,
//! then the stack file's `namespace:`, then `$OPENFAAS_NS`, then the gateway's default.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::client::{ensure_success, Client};
use crate::functions::print_table;
use crate::queue::urlencode;

/// faas-cli's variable for a default namespace (after the flag and the stack file's).
const NAMESPACE_ENV: &str = "OPENFAAS_NS";

/// `-n/--namespace`, for the commands that act in one namespace.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NamespaceArg {
    /// Namespace, over a stack file's `namespace:` [default: $OPENFAAS_NS, then openfaas-fn].
    #[arg(short = 'n', long = "namespace", value_name = "NS")]
    pub namespace: Option<String>,
}

impl NamespaceArg {
    /// The namespace `-n` names.
    pub fn given(ns: &str) -> NamespaceArg {
        NamespaceArg {
            namespace: Some(ns.to_string()),
        }
    }

    /// The namespace meant for a function whose stack entry says `stack` (empty: none);
    /// empty means the gateway's default.
    pub fn pick(&self, stack: &str) -> Result<String> {
        let env = std::env::var(NAMESPACE_ENV).unwrap_or_default();
        let ns = [self.namespace.as_deref().unwrap_or(""), stack, &env]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or("");
        virga_types::validate_namespace(ns)?;
        Ok(ns.to_string())
    }

    /// The namespace meant where no stack file is read.
    pub fn get(&self) -> Result<String> {
        self.pick("")
    }
}

/// How function `name` of namespace `ns` is addressed in `/function/` paths and messages:
/// `name`, or `name.ns` outside the default namespace.
pub fn target(name: &str, ns: &str) -> String {
    virga_types::function_key(name, ns)
}

/// `?namespace=NS` as faas-cli sends it: only when one is named.
pub fn ns_query(ns: &str) -> Vec<(&'static str, &str)> {
    if ns.is_empty() {
        Vec::new()
    } else {
        vec![("namespace", ns)]
    }
}

/// `virga namespace` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum NamespaceCommand {
    /// Create a namespace.
    Create(MetaArgs),
    /// Show a namespace's labels and annotations.
    Get {
        /// Namespace name.
        name: String,
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace a namespace's labels and annotations with those given.
    Update(MetaArgs),
    /// Remove a namespace (refused while it holds functions or secrets, unless --cascade).
    #[command(alias = "rm", alias = "delete")]
    Remove {
        /// Namespace name.
        name: String,
        /// Remove its functions and secrets too.
        #[arg(long)]
        cascade: bool,
    },
    /// List namespaces.
    #[command(alias = "ls")]
    List {
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Name, labels and annotations of `create` and `update`.
#[derive(Debug, clap::Args)]
pub struct MetaArgs {
    /// Namespace name (lower-case letters, digits and '-').
    pub name: String,
    /// Label as KEY=VALUE (repeatable).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Annotation as KEY=VALUE (repeatable), e.g. virga.quota.functions=10.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
}

/// OpenFaaS's `FunctionNamespace`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct FunctionNamespace {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Run a `virga namespace` subcommand.
pub fn run(client: &Client, cmd: NamespaceCommand) -> Result<()> {
    match cmd {
        NamespaceCommand::Create(args) => create(client, args),
        NamespaceCommand::Get { name, json } => get(client, &name, json),
        NamespaceCommand::Update(args) => update(client, args),
        NamespaceCommand::Remove { name, cascade } => remove(client, &name, cascade),
        NamespaceCommand::List { json } => list(client, json),
    }
}

/// `KEY=VALUE` pairs as a map; errors name the flag.
fn parse_map(pairs: &[String], flag: &str) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => bail!("--{flag} {p:?}: expected KEY=VALUE"),
        })
        .collect()
}

fn body(args: &MetaArgs) -> Result<FunctionNamespace> {
    Ok(FunctionNamespace {
        name: args.name.clone(),
        labels: parse_map(&args.labels, "label")?,
        annotations: parse_map(&args.annotations, "annotation")?,
    })
}

fn path(name: &str) -> String {
    format!("/system/namespace/{}", urlencode(name))
}

fn create(client: &Client, args: MetaArgs) -> Result<()> {
    let req = body(&args)?;
    let resp = client.send_json(Method::POST, "/system/namespace/", &req)?;
    ensure_success(resp, &format!("creating namespace {}", args.name))?;
    println!("Created namespace {}", args.name);
    Ok(())
}

fn update(client: &Client, args: MetaArgs) -> Result<()> {
    let req = body(&args)?;
    let resp = client.send_json(Method::PUT, &path(&args.name), &req)?;
    ensure_success(resp, &format!("updating namespace {}", args.name))?;
    println!("Updated namespace {}", args.name);
    Ok(())
}

fn get(client: &Client, name: &str, json: bool) -> Result<()> {
    let what = format!("reading namespace {name}");
    if json {
        println!("{}", client.get_text(&path(name), &what)?.trim_end());
        return Ok(());
    }
    let ns: FunctionNamespace = client.get_json(&path(name), &what)?;
    let text = |m: &BTreeMap<String, String>| {
        if m.is_empty() {
            "<none>".to_string()
        } else {
            let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.join(", ")
        }
    };
    println!("{:<12} {}", "Name:", ns.name);
    println!("{:<12} {}", "Labels:", text(&ns.labels));
    println!("{:<12} {}", "Annotations:", text(&ns.annotations));
    Ok(())
}

fn remove(client: &Client, name: &str, cascade: bool) -> Result<()> {
    let mut rb = client.request(Method::DELETE, &path(name));
    if cascade {
        rb = rb.query(&[("cascade", "true")]);
    }
    let resp = client.send(rb)?;
    if resp.status() == StatusCode::NOT_FOUND {
        // The gateway's 404 names the namespace and says how to create one; a removal only
        // needs to say it is not there.
        bail!("namespace {name} not found on {}", client.base());
    }
    ensure_success(resp, &format!("removing namespace {name}"))?;
    println!("Removed namespace {name}");
    Ok(())
}

fn list(client: &Client, json: bool) -> Result<()> {
    const WHAT: &str = "listing namespaces";
    if json {
        println!(
            "{}",
            client.get_text("/system/namespaces", WHAT)?.trim_end()
        );
        return Ok(());
    }
    let mut names: Vec<String> = client.get_json("/system/namespaces", WHAT)?;
    names.sort();
    let mut rows = vec![vec!["NAME".to_string()]];
    rows.extend(names.into_iter().map(|n| vec![n]));
    print_table(&rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_label_pairs() {
        let m = parse_map(&["a=1".into(), "b=x=y".into(), "c=".into()], "label").unwrap();
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "x=y");
        assert_eq!(m["c"], "");
        let err = parse_map(&["nope".into()], "label")
            .unwrap_err()
            .to_string();
        assert!(err.contains("--label \"nope\""), "{err}");
    }

    #[test]
    fn targets_name_the_namespace_outside_the_default() {
        assert_eq!(target("echo", ""), "echo");
        assert_eq!(target("echo", "openfaas-fn"), "echo");
        assert_eq!(target("echo", "team-a"), "echo.team-a");
    }
}
