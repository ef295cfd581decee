//! Commands on deployed functions: `list`, `describe`, `invoke`, `remove` and `scale`,
//! each one or two gateway calls through [`Client`].

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use virga_types::{DeleteFunctionRequest, FunctionStatus, ScaleServiceRequest};

use crate::client::{ensure_success, Client};
use crate::namespaces::{ns_query, target, NamespaceArg};
use crate::stack::Stack;

/// Options of `virga list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print the gateway's JSON.
    #[arg(long)]
    pub json: bool,
    /// More columns: available replicas, created, process.
    #[arg(short, long)]
    pub verbose: bool,
    /// Whose functions to list.
    #[command(flatten)]
    pub ns: NamespaceArg,
}

/// Options of `virga describe`.
#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    /// Function name.
    pub name: String,
    /// Print the gateway's JSON.
    #[arg(long)]
    pub json: bool,
    /// The function's namespace.
    #[command(flatten)]
    pub ns: NamespaceArg,
}

/// Options of `virga invoke`.
#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    /// Function name.
    pub name: String,
    /// HTTP method.
    #[arg(short, long, default_value = "POST")]
    pub method: String,
    /// Request header as K=V (repeatable).
    #[arg(short = 'H', long = "header", value_name = "K=V")]
    pub headers: Vec<String>,
    /// Query parameter as k=v (repeatable).
    #[arg(long = "query", value_name = "k=v")]
    pub query: Vec<String>,
    /// Content-Type of the body.
    #[arg(long, default_value = "text/plain")]
    pub content_type: String,
    /// Extra path after /function/NAME.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Queue the call (POST /async-function/NAME) and print its call id.
    #[arg(long = "async")]
    pub async_call: bool,
    /// With --async: where to POST the result.
    #[arg(long, value_name = "URL", requires = "async_call")]
    pub callback: Option<String>,
    /// The function's namespace (calls /function/NAME.NS).
    #[command(flatten)]
    pub ns: NamespaceArg,
}

/// Options of `virga remove`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// Function name (or use -f to remove every function of a stack file).
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// Stack file whose functions to remove.
    #[arg(short = 'f', long = "yaml")]
    pub file: Option<PathBuf>,
    /// With -f: only functions whose name matches (`*` allowed).
    #[arg(long)]
    pub filter: Option<String>,
    /// The function's namespace (with -f: overrides each function's `namespace:`).
    #[command(flatten)]
    pub ns: NamespaceArg,
}

/// Options of `virga scale`.
#[derive(Debug, clap::Args)]
pub struct ScaleArgs {
    /// Function name.
    pub name: String,
    /// Wanted instances (0 allowed).
    #[arg(long)]
    pub replicas: u64,
    /// The function's namespace.
    #[command(flatten)]
    pub ns: NamespaceArg,
}

/// Run `virga list`.
pub fn list(client: &Client, args: ListArgs) -> Result<()> {
    let ns = args.ns.get()?;
    let rb = client
        .request(Method::GET, "/system/functions")
        .query(&ns_query(&ns));
    let resp = client.send_ok(rb, "listing functions")?;
    if args.json {
        let text = resp
            .text()
            .context("listing functions: cannot read the answer")?;
        println!("{}", text.trim_end());
        return Ok(());
    }
    let mut fns: Vec<FunctionStatus> = resp
        .json()
        .context("listing functions: the gateway's answer is not the expected JSON")?;
    fns.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = vec![vec![
        "Function".to_string(),
        "Invocations".to_string(),
        "Replicas".to_string(),
        "Image".to_string(),
    ]];
    if args.verbose {
        rows[0].extend([
            "Available".to_string(),
            "Created".to_string(),
            "Process".to_string(),
        ]);
    }
    for f in &fns {
        let mut row = vec![
            f.name.clone(),
            format!("{:.0}", f.invocation_count),
            f.replicas.to_string(),
            f.image.clone(),
        ];
        if args.verbose {
            row.push(f.available_replicas.to_string());
            row.push(f.created_at.format("%Y-%m-%d %H:%M:%S").to_string());
            row.push(f.env_process.clone());
        }
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

/// Print rows as left-aligned columns.
pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// Run `virga describe`.
pub fn describe(client: &Client, args: DescribeArgs) -> Result<()> {
    virga_types::validate_name("function name", &args.name)?;
    let ns = args.ns.get()?;
    let path = format!("/system/function/{}", args.name);
    let what = format!("describing {}", target(&args.name, &ns));
    let rb = client.request(Method::GET, &path).query(&ns_query(&ns));
    let resp = client.send_ok(rb, &what)?;
    if args.json {
        let text = resp
            .text()
            .with_context(|| format!("{what}: cannot read the answer"))?;
        println!("{}", text.trim_end());
        return Ok(());
    }
    let f: FunctionStatus = resp
        .json()
        .with_context(|| format!("{what}: the gateway's answer is not the expected JSON"))?;
    let status = if f.available_replicas > 0 {
        "Ready"
    } else {
        "Not Ready"
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("Name", f.name.clone()),
        ("Status", status.to_string()),
        ("Replicas", f.replicas.to_string()),
        ("Available replicas", f.available_replicas.to_string()),
        ("Invocations", format!("{:.0}", f.invocation_count)),
        ("Image", f.image.clone()),
        ("Function process", f.env_process.clone()),
        ("URL", client.function_url(&target(&f.name, &f.namespace))),
        ("Created", f.created_at.to_rfc3339()),
    ];
    if let (Some(pinned), Some(digest)) = (&f.pinned_image, &f.image_digest) {
        rows.insert(6, ("Pinned image", pinned.clone()));
        rows.insert(7, ("Image digest", digest.clone()));
    }
    if let Some(pull) = &f.image_pull {
        let text = match &pull.error {
            Some(e) => format!("{} failed: {e}", pull.image),
            None => format!(
                "{} under way: {}/{} layers, {} of {}",
                pull.image,
                pull.layers_done,
                pull.layers_total,
                crate::pack::human_size(pull.bytes_done),
                crate::pack::human_size(pull.bytes_total)
            ),
        };
        rows.push(("Image pull", text));
    }
    if !f.namespace.is_empty() {
        rows.push(("Namespace", f.namespace.clone()));
    }
    rows.push(("Labels", map_text(f.labels.as_ref())));
    rows.push(("Annotations", map_text(f.annotations.as_ref())));
    rows.push(("Environment", map_text(Some(&f.env_vars))));
    rows.push(("Secrets", f.secrets.join(", ")));
    rows.push(("Constraints", f.constraints.join(", ")));
    let res = |r: &Option<virga_types::FunctionResources>| match r {
        Some(r) => format!("memory: {} cpu: {}", or_dash(&r.memory), or_dash(&r.cpu)),
        None => String::new(),
    };
    rows.push(("Requests", res(&f.requests)));
    rows.push(("Limits", res(&f.limits)));
    if f.read_only_root_filesystem {
        rows.push(("Read-only root", "true".to_string()));
    }
    for (k, v) in rows {
        println!(
            "{:<19} {}",
            format!("{k}:"),
            if v.is_empty() { "<none>" } else { &v }
        );
    }
    Ok(())
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn map_text(m: Option<&BTreeMap<String, String>>) -> String {
    m.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
    .unwrap_or_default()
}

/// Split `K=V` (or `K:V` for headers); errors name the flag.
fn split_pair<'a>(s: &'a str, flag: &str) -> Result<(&'a str, &'a str)> {
    match s.split_once('=').or_else(|| s.split_once(':')) {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v.trim_start())),
        _ => bail!("{flag} {s:?}: expected KEY=VALUE"),
    }
}

/// Run `virga invoke`: stdin is the body, the answer goes to stdout (stderr and exit 1 on non-2xx).
pub fn invoke(client: &Client, args: InvokeArgs) -> Result<()> {
    virga_types::validate_name("function name", &args.name)?;
    let key = target(&args.name, &args.ns.get()?);
    let method = Method::from_bytes(args.method.to_uppercase().as_bytes())
        .with_context(|| format!("{:?} is not an HTTP method", args.method))?;
    let mut body = Vec::new();
    let stdin = std::io::stdin();
    let skip_stdin =
        stdin.is_terminal() && matches!(method, Method::GET | Method::HEAD | Method::DELETE);
    if !skip_stdin {
        if stdin.is_terminal() {
            eprintln!("Reading from STDIN - hit (Control + D) to stop.");
        }
        stdin
            .lock()
            .read_to_end(&mut body)
            .context("cannot read stdin")?;
    }
    let extra = args.path.trim_start_matches('/');
    let route = if args.async_call {
        "async-function"
    } else {
        "function"
    };
    let path = if extra.is_empty() {
        format!("/{route}/{key}")
    } else {
        format!("/{route}/{key}/{extra}")
    };
    let mut rb = client.request(method, &path);
    let mut query = Vec::new();
    for q in &args.query {
        let (k, v) = q.split_once('=').unwrap_or((q.as_str(), ""));
        query.push((k.to_string(), v.to_string()));
    }
    if !query.is_empty() {
        rb = rb.query(&query);
    }
    rb = rb.header(reqwest::header::CONTENT_TYPE, &args.content_type);
    for h in &args.headers {
        let (k, v) = split_pair(h, "--header")?;
        rb = rb.header(k, v);
    }
    if let Some(url) = &args.callback {
        rb = rb.header("X-Callback-Url", url);
    }
    let resp = client.send(rb.body(body))?;
    let status = resp.status();
    if args.async_call && status.is_success() {
        let id = resp
            .headers()
            .get("x-call-id")
            .and_then(|v| v.to_str().ok());
        println!("{}", id.unwrap_or_default());
        return Ok(());
    }
    let bytes = resp.bytes().context("cannot read the function's answer")?;
    if status.is_success() {
        let mut out = std::io::stdout().lock();
        out.write_all(&bytes)?;
        out.flush()?;
        return Ok(());
    }
    let mut err = std::io::stderr().lock();
    err.write_all(&bytes)?;
    if !bytes.ends_with(b"\n") && !bytes.is_empty() {
        err.write_all(b"\n")?;
    }
    writeln!(
        err,
        "Function {key} answered {}",
        crate::client::status_text(status)
    )?;
    err.flush()?;
    std::process::exit(1);
}

/// Run `virga remove`.
pub fn remove(client_for: impl Fn(Option<&str>) -> Result<Client>, args: RemoveArgs) -> Result<()> {
    let (client, targets) = match (&args.name, &args.file) {
        (Some(name), _) => (client_for(None)?, vec![(name.clone(), args.ns.get()?)]),
        (None, Some(file)) => {
            let stack = Stack::load(file)?;
            let mut targets = Vec::new();
            for (name, f) in stack.select(args.filter.as_deref())? {
                targets.push((name.to_string(), args.ns.pick(&f.namespace)?));
            }
            (client_for(Some(&stack.provider.gateway))?, targets)
        }
        (None, None) => bail!("give a function name or -f stack.yaml"),
    };
    let mut failed = 0;
    for (name, ns) in &targets {
        let key = target(name, ns);
        let body = DeleteFunctionRequest {
            function_name: name.clone(),
            namespace: ns.clone(),
        };
        let resp = client.send_json(Method::DELETE, "/system/functions", &body)?;
        if resp.status() == StatusCode::NOT_FOUND {
            let msg = crate::client::error_message(&resp.text().unwrap_or_default());
            eprintln!("Function {key} not found on {}: {msg}", client.base());
            failed += 1;
            continue;
        }
        match ensure_success(resp, &format!("removing {key}")) {
            Ok(_) => println!("Removed {key}"),
            Err(e) => {
                eprintln!("{e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} function(s) not removed", targets.len());
    }
    Ok(())
}

/// Run `virga scale`.
pub fn scale(client: &Client, args: ScaleArgs) -> Result<()> {
    virga_types::validate_name("function name", &args.name)?;
    let ns = args.ns.get()?;
    let key = target(&args.name, &ns);
    let body = ScaleServiceRequest {
        service_name: args.name.clone(),
        namespace: ns,
        replicas: args.replicas,
    };
    let path = format!("/system/scale-function/{}", args.name);
    let resp = client.send_json(Method::POST, &path, &body)?;
    ensure_success(resp, &format!("scaling {key}"))?;
    println!("Scaled {key} to {} replica(s)", args.replicas);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_header_pairs() {
        assert_eq!(split_pair("X-A=1", "--header").unwrap(), ("X-A", "1"));
        assert_eq!(split_pair("X-A: 1", "--header").unwrap(), ("X-A", "1"));
        assert!(split_pair("nope", "--header").is_err());
    }
}
