//! Function templates: the ones embedded in the binary from the repository's
//! `templates/` directory, overridable by a local `./template/<lang>/` directory (the
//! faas-cli convention). A template is `template.yml`, the runtime's entrypoint files and
//! `function/`, the starter handler `virga new` copies.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use include_dir::{include_dir, Dir};
use serde::Deserialize;

static EMBEDDED: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../templates");

/// Name of a template's description file.
pub const TEMPLATE_YML: &str = "template.yml";

/// Directory of the starter handler inside a template.
pub const FUNCTION_DIR: &str = "function";

/// Where a template comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Compiled into the binary.
    Embedded(&'static Dir<'static>),
    /// A local `template/<lang>/` directory.
    Local(PathBuf),
}

/// A template found by name.
#[derive(Debug, Clone)]
pub struct Template {
    /// Language name (the directory name).
    pub lang: String,
    /// Where its files are.
    pub source: Source,
}

/// One file of a template, relative to the template directory.
#[derive(Debug, Clone)]
pub struct TemplateFile {
    /// Relative path, e.g. `function/handler.py`.
    pub rel: PathBuf,
    /// File contents.
    pub contents: Vec<u8>,
    /// Unix permission bits.
    pub mode: u32,
}

/// The parsed `template.yml`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TemplateSpec {
    /// Command the watchdog runs.
    #[serde(default)]
    pub fprocess: String,
    /// Shown after `virga new`.
    #[serde(default)]
    pub welcome_message: String,
    /// Watchdog environment (`mode`, `upstream_url`, ...).
    #[serde(default)]
    pub environment: BTreeMap<String, serde_yaml::Value>,
    /// The image OCI builds of this template start from (stack.yml's
    /// `build_args.BASE_IMAGE` wins).
    #[serde(default)]
    pub base_image: String,
}

impl TemplateSpec {
    /// The watchdog environment for the bundle manifest: `fprocess` plus `environment`.
    pub fn watchdog_env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self
            .environment
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_yaml::Value::String(s) => s.clone(),
                    serde_yaml::Value::Null => String::new(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        if !self.fprocess.is_empty() {
            env.insert("fprocess".to_string(), self.fprocess.clone());
        }
        env
    }
}

/// The embedded templates' runtimes (entrypoint files and watchdog environment), which the
/// warm pool and zygotes run from the platform's own copy.
pub fn embedded_runtimes() -> Vec<virga_provider_local::PoolRuntime> {
    list(&[])
        .into_values()
        .filter_map(|t| {
            let env = t.watchdog_env().ok()?;
            let files = t
                .runtime_files()
                .ok()?
                .into_iter()
                .map(|f| (f.rel, f.contents))
                .collect();
            Some(virga_provider_local::PoolRuntime {
                lang: t.lang,
                files,
                env,
            })
        })
        .collect()
}

/// The local template directories searched before the embedded ones: `./template` and
/// `<extra>/template` for each extra directory (the stack file's), without duplicates.
pub fn search_dirs(extra: &[&Path]) -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from("template")];
    for d in extra {
        let candidate = d.join("template");
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => a == b,
        };
        if !dirs.iter().any(|x| same(x, &candidate)) {
            dirs.push(candidate);
        }
    }
    dirs
}

/// Other names of embedded templates, as OpenFaaS names its node templates by version:
/// (name, the template it is).
const ALIASES: [(&str, &str); 2] = [("node18", "node20"), ("node22", "node20")];

/// All templates by language; local ones shadow embedded ones of the same name. An alias maps
/// to the template it names (whose `lang` is the template's own name).
pub fn list(dirs: &[PathBuf]) -> BTreeMap<String, Template> {
    let mut out = BTreeMap::new();
    for d in EMBEDDED.dirs() {
        if d.get_file(d.path().join(TEMPLATE_YML)).is_some() {
            let lang = file_name(d.path());
            out.insert(
                lang.clone(),
                Template {
                    lang,
                    source: Source::Embedded(d),
                },
            );
        }
    }
    for (alias, target) in ALIASES {
        if let Some(t) = out.get(target).cloned() {
            out.insert(alias.to_string(), t);
        }
    }
    for dir in dirs.iter().rev() {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.join(TEMPLATE_YML).is_file() {
                let lang = file_name(&path);
                out.insert(
                    lang.clone(),
                    Template {
                        lang,
                        source: Source::Local(path),
                    },
                );
            }
        }
    }
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The template for `lang`, or an error listing the available ones.
pub fn find(lang: &str, dirs: &[PathBuf]) -> Result<Template> {
    let mut all = list(dirs);
    match all.remove(lang) {
        Some(t) => Ok(t),
        None => {
            let names: Vec<&str> = all.keys().map(String::as_str).collect();
            bail!(
                "unknown template language {lang:?}: available templates are {} \
                 (or add your own under ./template/{lang}/)",
                names.join(", ")
            )
        }
    }
}

impl Template {
    /// `embedded` or the local directory.
    pub fn origin(&self) -> String {
        match &self.source {
            Source::Embedded(_) => "embedded".to_string(),
            Source::Local(p) => p.display().to_string(),
        }
    }

    /// Every file of the template, sorted by path.
    pub fn files(&self) -> Result<Vec<TemplateFile>> {
        let mut out = Vec::new();
        match &self.source {
            Source::Embedded(dir) => collect_embedded(dir, dir.path(), &mut out),
            Source::Local(root) => collect_local(root, Path::new(""), &mut out)?,
        }
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    /// The parsed `template.yml`.
    pub fn spec(&self) -> Result<TemplateSpec> {
        let files = self.files()?;
        let file = files
            .iter()
            .find(|f| f.rel == Path::new(TEMPLATE_YML))
            .with_context(|| format!("template {} has no {TEMPLATE_YML}", self.lang))?;
        let spec: TemplateSpec = serde_yaml::from_slice(&file.contents).map_err(|e| {
            anyhow::anyhow!(
                "template {} ({}): {TEMPLATE_YML}: {e}",
                self.lang,
                self.origin()
            )
        })?;
        Ok(spec)
    }

    /// The watchdog environment a bundle of this template runs with: what its Dockerfile's
    /// `ENV` lines set for the watchdog (real OpenFaaS templates keep them there), then
    /// template.yml's `environment` and `fprocess`.
    pub fn watchdog_env(&self) -> Result<BTreeMap<String, String>> {
        let mut env = match self
            .files()?
            .iter()
            .find(|f| f.rel == Path::new("Dockerfile"))
        {
            Some(f) => crate::dockerfile::watchdog_env(&String::from_utf8_lossy(&f.contents)),
            None => BTreeMap::new(),
        };
        env.extend(self.spec()?.watchdog_env());
        Ok(env)
    }

    /// Write the starter handler (`function/`) into `dest`.
    pub fn write_function(&self, dest: &Path) -> Result<usize> {
        let mut n = 0;
        for f in self.files()? {
            if let Ok(rel) = f.rel.strip_prefix(FUNCTION_DIR) {
                write_file(&dest.join(rel), &f.contents, f.mode)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The runtime files: all but `template.yml` and `function/`.
    pub fn runtime_files(&self) -> Result<Vec<TemplateFile>> {
        let mut files = self.files()?;
        files.retain(|f| f.rel != Path::new(TEMPLATE_YML) && !f.rel.starts_with(FUNCTION_DIR));
        Ok(files)
    }

    /// Write the runtime files into `dest`.
    pub fn write_runtime(&self, dest: &Path) -> Result<()> {
        for f in self.runtime_files()? {
            write_file(&dest.join(&f.rel), &f.contents, f.mode)?;
        }
        Ok(())
    }
}

fn collect_embedded(dir: &Dir<'static>, root: &Path, out: &mut Vec<TemplateFile>) {
    for f in dir.files() {
        if is_junk(f.path()) {
            continue;
        }
        let rel = f
            .path()
            .strip_prefix(root)
            .unwrap_or(f.path())
            .to_path_buf();
        let executable = rel.extension().is_some_and(|e| e == "sh");
        out.push(TemplateFile {
            rel,
            contents: f.contents().to_vec(),
            mode: if executable { 0o755 } else { 0o644 },
        });
    }
    for d in dir.dirs() {
        collect_embedded(d, root, out);
    }
}

fn collect_local(root: &Path, rel: &Path, out: &mut Vec<TemplateFile>) -> Result<()> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        if is_junk(&rel) {
            continue;
        }
        let path = root.join(&rel);
        let meta =
            fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            collect_local(root, &rel, out)?;
        } else if meta.is_file() {
            let contents =
                fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            out.push(TemplateFile {
                rel,
                contents,
                mode: mode_of(&meta),
            });
        }
    }
    Ok(())
}

/// Byte-code caches and editor droppings that never belong in a template.
fn is_junk(p: &Path) -> bool {
    p.components().any(|c| c.as_os_str() == "__pycache__")
        || p.extension().is_some_and(|e| e == "pyc")
        || p.file_name().is_some_and(|n| n == ".DS_Store")
}

/// Permission bits of a file (0644 where the platform has none).
pub fn mode_of(meta: &fs::Metadata) -> u32 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o7777
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        0o644
    }
}

/// Write `contents` to `path` with `mode`, creating parent directories.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set permissions of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_templates_are_complete() {
        let all = list(&[]);
        for lang in [
            "python3-http",
            "python3",
            "node",
            "node20",
            "node18",
            "node22",
            "bash",
            "python3-lambda",
            "node-lambda",
        ] {
            let t = all.get(lang).unwrap_or_else(|| panic!("missing {lang}"));
            let spec = t.spec().unwrap();
            assert!(!spec.fprocess.is_empty());
            assert!(spec.watchdog_env().contains_key("mode"));
            let files = t.files().unwrap();
            assert!(
                files.iter().any(|f| f.rel.starts_with(FUNCTION_DIR)),
                "{lang}"
            );
        }
        let http = all["python3-http"].spec().unwrap().watchdog_env();
        assert_eq!(http["upstream_url"], "http://127.0.0.1:5000");
        assert_eq!(http["fprocess"], "python3 index.py");
        // The Lambda templates run in function/ (LAMBDA_TASK_ROOT) on the Runtime API.
        for lang in ["python3-lambda", "node-lambda"] {
            let env = all[lang].spec().unwrap().watchdog_env();
            assert_eq!(env["mode"], "lambda", "{lang}");
            assert_eq!(env["LAMBDA_TASK_ROOT"], "function", "{lang}");
            assert_eq!(env["_HANDLER"], "handler.handler", "{lang}");
            assert!(!all[lang].spec().unwrap().base_image.is_empty(), "{lang}");
        }
    }

    #[test]
    fn local_templates_override_and_unknown_lists_choices() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("template").join("bash");
        write_file(
            &root.join(TEMPLATE_YML),
            b"language: bash\nfprocess: cat\n",
            0o644,
        )
        .unwrap();
        write_file(&root.join("function/handler.sh"), b"cat\n", 0o755).unwrap();
        let dirs = vec![dir.path().join("template")];
        let t = find("bash", &dirs).unwrap();
        assert!(matches!(t.source, Source::Local(_)));
        assert_eq!(t.spec().unwrap().fprocess, "cat");
        let out = dir.path().join("out");
        assert_eq!(t.write_function(&out).unwrap(), 1);
        assert_eq!(fs::read(out.join("handler.sh")).unwrap(), b"cat\n");
        let err = find("cobol", &dirs).unwrap_err().to_string();
        assert!(
            err.contains("python3-http") && err.contains("node"),
            "{err}"
        );
    }
}
