//! The example functions shipped in the repository's `examples/`, embedded in the binary so
//! `virga up --with-examples` works from any directory: they are written to the data
//! directory and deployed through the gateway's own API, exactly as `virga deploy` would.

use std::path::Path;

use anyhow::{Context, Result};
use include_dir::{include_dir, Dir};

use crate::client::Client;
use crate::config::{Auth, Credentials};
use crate::stack::Stack;

static EXAMPLES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../examples");

/// Deploy the examples to the gateway at `url`; errors are printed, not fatal.
pub fn deploy(url: &str, password: &str, data_dir: &Path) {
    match try_deploy(url, password, data_dir) {
        Ok(()) => println!("Examples deployed: try `curl {url}/function/hello-python?name=Ada`"),
        Err(e) => eprintln!("Deploying the examples failed: {e:#}"),
    }
}

fn try_deploy(url: &str, password: &str, data_dir: &Path) -> Result<()> {
    let dir = data_dir.join("examples");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    EXAMPLES
        .extract(&dir)
        .with_context(|| format!("write examples to {}", dir.display()))?;
    let stack = Stack::load(&dir.join("stack.yml"))?;
    let creds = Credentials {
        username: "admin".into(),
        password: password.into(),
    };
    let client = Client::with_credentials(url, Some(Auth::Basic(creds)))?;
    let registry = crate::oci_build::RegistryArgs::default();
    let opts = crate::builder::BuildOptions {
        oci: false,
        registry: &registry,
        send_registry_auth: false,
    };
    // Into the default namespace, whatever $OPENFAAS_NS says.
    let ns = crate::namespaces::NamespaceArg::given(virga_types::DEFAULT_NAMESPACE);
    crate::deploy::deploy_stack(&client, &stack, None, &ns, opts)
}
