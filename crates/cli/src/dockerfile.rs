//! The watchdog settings of an OpenFaaS template's Dockerfile. Real templates (python3-http,
//! node20, ...) keep `mode`, `upstream_url` and the like in `ENV` lines, not in template.yml,
//! so `virga build` reads them: `ENV key=value ...` (quotes and backslashes as Docker reads
//! them) and the older `ENV key value`, with `$NAME`/`${NAME}` taken from earlier `ENV`s and
//! from `ARG NAME=default`s. Only the watchdog's own keys are kept; the rest of a Dockerfile
//! (packages, users, other variables) means nothing outside a container build.

use std::collections::BTreeMap;

/// The watchdog variables (`fprocess`, `mode`, `upstream_url`, timeouts, ...) a Dockerfile's
/// `ENV` lines set, later lines winning.
pub fn watchdog_env(dockerfile: &str) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for line in logical_lines(dockerfile) {
        let Some((word, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim();
        match word.to_ascii_uppercase().as_str() {
            // Each stage starts afresh; the last one is the image.
            "FROM" => {
                vars.clear();
                out.clear();
            }
            "ARG" => {
                if let Some((k, v)) = rest.split_once('=') {
                    let v = expand(&unquote(v), &vars);
                    vars.entry(k.trim().to_string()).or_insert(v);
                }
            }
            "ENV" => {
                for (k, v) in env_pairs(rest) {
                    let v = expand(&v, &vars);
                    if virga_watchdog::config::ENV_KEYS.contains(&k.as_str()) {
                        out.insert(k.clone(), v.clone());
                    }
                    vars.insert(k, v);
                }
            }
            _ => {}
        }
    }
    out
}

/// Lines joined across trailing backslashes, without comments and blank lines.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let line = raw.trim_end();
        if cur.is_empty() && (line.trim_start().starts_with('#') || line.trim().is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                cur.push_str(line);
                out.push(std::mem::take(&mut cur).trim().to_string());
            }
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// `k=v k2="v 2"`, or the older single `k v` form.
fn env_pairs(rest: &str) -> Vec<(String, String)> {
    let first = rest.split_whitespace().next().unwrap_or("");
    if !first.contains('=') {
        let value = rest[first.len()..].trim();
        return vec![(first.to_string(), unquote(value))];
    }
    shlex::split(rest)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    shlex::split(v)
        .filter(|w| w.len() == 1)
        .and_then(|mut w| w.pop())
        .unwrap_or_else(|| v.to_string())
}

/// `$NAME` and `${NAME}` replaced by `vars` (unknown names by nothing, as Docker does).
fn expand(v: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = match after.strip_prefix('{') {
            Some(b) => match b.find('}') {
                Some(j) => (&b[..j], j + 2),
                None => (after, after.len()),
            },
            None => {
                let n = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..n], n)
            }
        };
        if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(vars.get(name).map_or("", String::as_str));
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_watchdog_keys_of_env_lines() {
        let text = "FROM watchdog as w\nARG PORT=9\nFROM python:3 as ship\nARG PORT=5000\n# ENV mode=streaming\nENV fprocess=\"python index.py\"\nENV cgi_headers=\"true\" mode=\"http\" \\\n    upstream_url=\"http://127.0.0.1:${PORT}\"\nENV NPM_CONFIG_LOGLEVEL warn\nENV exec_timeout 10s\nENV write_timeout=$exec_timeout\nCMD [\"fwatchdog\"]\n";
        let env = watchdog_env(text);
        assert_eq!(env["fprocess"], "python index.py");
        assert_eq!(env["mode"], "http");
        assert_eq!(env["cgi_headers"], "true");
        assert_eq!(env["upstream_url"], "http://127.0.0.1:5000");
        assert_eq!(env["exec_timeout"], "10s");
        assert_eq!(env["write_timeout"], "10s");
        assert!(!env.contains_key("NPM_CONFIG_LOGLEVEL"));
    }
}
