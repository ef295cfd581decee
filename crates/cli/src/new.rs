//! `virga new`: copy a template's starter handler to `./NAME/` and add the function to a
//! faas-cli style stack file (created when missing, appended to otherwise).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::config::DEFAULT_GATEWAY;
use crate::templates;

/// Options of `virga new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// Function name (lower-case letters, digits and '-').
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// Template language (see `virga new --list`).
    #[arg(long, required_unless_present = "list")]
    pub lang: Option<String>,
    /// Image prefix, e.g. a registry user: the image becomes PREFIX/NAME:latest.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Stack file to create or append to [default: stack.yaml, else stack.yml].
    #[arg(short = 'f', long = "yaml")]
    pub file: Option<PathBuf>,
    /// List the available templates.
    #[arg(long)]
    pub list: bool,
}

/// Run `virga new`.
pub fn run(args: NewArgs) -> Result<()> {
    let file = crate::stack::default_file(args.file);
    let stack_dir = file.parent().filter(|p| !p.as_os_str().is_empty());
    let dirs = templates::search_dirs(&stack_dir.into_iter().collect::<Vec<_>>());
    if args.list {
        println!("Languages available as templates:");
        for (lang, t) in templates::list(&dirs) {
            if lang == t.lang {
                println!("- {lang} ({})", t.origin());
            } else {
                println!("- {lang} (the {} template)", t.lang);
            }
        }
        return Ok(());
    }
    let (Some(name), Some(lang)) = (args.name.as_deref(), args.lang.as_deref()) else {
        bail!("give a function name and --lang (see `virga new --list`)");
    };
    let welcome = create(name, lang, &args.prefix, &file, Path::new("."), &dirs)?;
    let folder = file
        .parent()
        .map(|p| p.join(name))
        .unwrap_or_else(|| PathBuf::from(name));
    println!("Function created in folder: {}", folder.display());
    println!("Stack file written: {}", file.display());
    if !welcome.trim().is_empty() {
        println!("\n{}", welcome.trim_end());
    }
    println!(
        "\nNext: `virga deploy -f {}` (or `virga build` to only build).",
        file.display()
    );
    Ok(())
}

/// Create function `name` from template `lang` under `base`, recording it in `stack_file`;
/// returns the template's welcome message.
pub fn create(
    name: &str,
    lang: &str,
    prefix: &str,
    stack_file: &Path,
    base: &Path,
    dirs: &[PathBuf],
) -> Result<String> {
    virga_types::validate_name("function name", name)?;
    let template = templates::find(lang, dirs)?;
    let spec = template.spec()?;
    let stack_path = base.join(stack_file);
    let existing = match fs::read_to_string(&stack_path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", stack_path.display())),
    };
    if let Some(text) = &existing {
        check_not_listed(text, name, &stack_path)?;
    }
    // The handler path in the stack file is relative to the stack file's folder.
    let dest = stack_path.parent().unwrap_or(base).join(name);
    if dest.exists() {
        bail!("folder {name}/ already exists: choose another name or remove it");
    }
    template.write_function(&dest)?;

    let image = if prefix.is_empty() {
        format!("{name}:latest")
    } else {
        format!("{}/{name}:latest", prefix.trim_end_matches('/'))
    };
    let block = format!("  {name}:\n    lang: {lang}\n    handler: ./{name}\n    image: {image}\n");
    let text = match existing {
        None => format!(
            "version: 1.0\nprovider:\n  name: openfaas\n  gateway: {DEFAULT_GATEWAY}\nfunctions:\n{block}"
        ),
        Some(text) => append_function(&text, name, &block, lang, &image)?,
    };
    fs::write(&stack_path, text)
        .with_context(|| format!("cannot write {}", stack_path.display()))?;
    Ok(spec.welcome_message)
}

fn check_not_listed(text: &str, name: &str, path: &Path) -> Result<()> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if value.get("functions").and_then(|f| f.get(name)).is_some() {
        bail!("function {name} is already listed in {}", path.display());
    }
    Ok(())
}

/// Add a function to existing stack text: appended as text when `functions:` is the last
/// top-level section (keeping comments), otherwise by rewriting the YAML.
fn append_function(text: &str, name: &str, block: &str, lang: &str, image: &str) -> Result<String> {
    let top_level: Vec<&str> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with([' ', '\t', '#', '-']))
        .collect();
    if top_level
        .last()
        .is_some_and(|l| l.trim_end() == "functions:")
    {
        let indent = text
            .lines()
            .skip_while(|l| l.trim_end() != "functions:")
            .skip(1)
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|l| l.len() - l.trim_start().len())
            .unwrap_or(2);
        let block: String = block
            .lines()
            .map(|l| {
                let inner = l.len() - l.trim_start().len();
                // The name line sits at `indent`, its fields one more `indent` in.
                let depth = if inner == 2 { indent } else { indent * 2 };
                format!("{}{}\n", " ".repeat(depth), l.trim_start())
            })
            .collect();
        let mut out = text.to_string();
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&block);
        return Ok(out);
    }
    let mut value: serde_yaml::Value = serde_yaml::from_str(text)?;
    let root = value
        .as_mapping_mut()
        .context("the stack file is not a YAML map")?;
    let functions = root
        .entry("functions".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    if functions.is_null() {
        *functions = serde_yaml::Value::Mapping(Default::default());
    }
    let mut f = serde_yaml::Mapping::new();
    f.insert("lang".into(), lang.into());
    f.insert("handler".into(), format!("./{name}").into());
    f.insert("image".into(), image.into());
    functions
        .as_mapping_mut()
        .context("`functions` in the stack file is not a map")?
        .insert(name.into(), serde_yaml::Value::Mapping(f));
    Ok(serde_yaml::to_string(&value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::Stack;

    #[test]
    fn creates_and_appends_stack_entries() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let stack = Path::new("stack.yml");
        let welcome = create("hello", "python3-http", "", stack, base, &[]).unwrap();
        assert!(welcome.contains("python3-http"));
        assert!(base.join("hello/handler.py").is_file());
        create("echo", "bash", "me", stack, base, &[]).unwrap();
        let text = fs::read_to_string(base.join(stack)).unwrap();
        let parsed = Stack::parse(&base.join(stack), &text, |_| None).unwrap();
        assert_eq!(parsed.functions["hello"].lang, "python3-http");
        assert_eq!(parsed.functions["echo"].image, "me/echo:latest");
        assert_eq!(parsed.functions["echo"].handler, "./echo");
        assert_eq!(parsed.provider.gateway, DEFAULT_GATEWAY);

        let err = create("hello", "bash", "", stack, base, &[]).unwrap_err();
        assert!(err.to_string().contains("already listed"), "{err}");
        assert!(create("Bad_Name", "bash", "", stack, base, &[]).is_err());
        let err = create("x", "cobol", "", stack, base, &[]).unwrap_err();
        assert!(err.to_string().contains("available templates"), "{err}");
    }

    #[test]
    fn appends_with_the_file_indentation_or_rewrites() {
        let four = "functions:\n    a:\n        lang: bash\n";
        let out = append_function(four, "b", "  b:\n    lang: node\n", "node", "b:latest").unwrap();
        assert!(out.ends_with("    b:\n        lang: node\n"), "{out}");
        let reordered = "functions:\n  a:\n    lang: bash\nprovider:\n  name: openfaas\n";
        let out = append_function(reordered, "b", "", "node", "b:latest").unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(v["functions"]["b"]["lang"], "node");
        assert_eq!(v["functions"]["a"]["lang"], "bash");
    }
}
