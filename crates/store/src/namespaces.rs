//! Namespaces: each function and secret lives in one. The default namespace (`openfaas-fn`)
//! always exists, stored or not, so a store from before namespaces needs no migration; others
//! exist once created. Functions and secrets of a namespace are keyed `name.namespace`
//! ([`virga_types::function_key`]), so a namespace's contents are found by that suffix.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use virga_types::DEFAULT_NAMESPACE;

use crate::db::db_err;
use crate::{Result, Store, StoreError};

/// Namespaces by name, as JSON.
pub(crate) const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");

/// A namespace as stored: OpenFaaS's `FunctionNamespace` plus its creation time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    /// Its name (a DNS-1123 label).
    pub name: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (e.g. the `virga.quota.*` ones).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When it was created (for the default namespace: when first changed).
    pub created_at: DateTime<Utc>,
}

impl Namespace {
    /// A namespace named `name` with nothing set.
    pub fn new(name: &str) -> Namespace {
        Namespace {
            name: name.to_string(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            created_at: Utc::now(),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Namespace> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Db(format!("stored namespace: {e}")))
}

fn encode(ns: &Namespace) -> Result<Vec<u8>> {
    serde_json::to_vec(ns).map_err(|e| StoreError::Db(format!("namespace: {e}")))
}

impl Store {
    /// One namespace; the default one always exists.
    pub fn namespace(&self, name: &str) -> Result<Option<Namespace>> {
        let stored = self.with_db(false, |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(NAMESPACES).map_err(db_err)?;
            let row = table.get(name).map_err(db_err)?;
            row.map(|v| decode(v.value())).transpose()
        })?;
        Ok(stored.or_else(|| (name == DEFAULT_NAMESPACE).then(|| Namespace::new(name))))
    }

    /// Every namespace, the default one first.
    pub fn namespaces(&self) -> Result<Vec<Namespace>> {
        let mut out = self.with_db(false, |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(NAMESPACES).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(db_err)? {
                out.push(decode(row.map_err(db_err)?.1.value())?);
            }
            Ok(out)
        })?;
        if !out.iter().any(|n| n.name == DEFAULT_NAMESPACE) {
            out.insert(0, Namespace::new(DEFAULT_NAMESPACE));
        } else {
            out.sort_by_key(|n| n.name != DEFAULT_NAMESPACE);
        }
        Ok(out)
    }

    /// Store a new namespace ([`StoreError::Exists`] if it exists, the default one included).
    pub fn create_namespace(&self, ns: &Namespace) -> Result<()> {
        if ns.name == DEFAULT_NAMESPACE {
            return Err(StoreError::Exists {
                kind: "namespace",
                name: ns.name.clone(),
            });
        }
        self.write(NAMESPACES, "namespace", &ns.name, encode(ns)?, Some(false))
    }

    /// Replace a namespace's labels and annotations ([`StoreError::NotFound`] unless it exists).
    pub fn update_namespace(&self, ns: &Namespace) -> Result<()> {
        let must_exist = (ns.name != DEFAULT_NAMESPACE).then_some(true);
        self.write(NAMESPACES, "namespace", &ns.name, encode(ns)?, must_exist)
    }

    /// Delete a namespace; false when it did not exist. The caller removes what it held.
    pub fn delete_namespace(&self, name: &str) -> Result<bool> {
        self.delete(NAMESPACES, name, None)
    }
}

#[cfg(test)]
mod tests {
    use crate::db::tests::key;
    use crate::*;

    #[test]
    fn namespaces_are_stored_and_the_default_always_exists() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), key()).unwrap();
        assert!(s.namespace(DEFAULT_NS).unwrap().is_some());
        assert!(s.namespace("team-a").unwrap().is_none());
        s.create_namespace(&Namespace::new("team-a")).unwrap();
        assert!(matches!(
            s.create_namespace(&Namespace::new("team-a")),
            Err(StoreError::Exists { .. })
        ));
        assert!(s.create_namespace(&Namespace::new(DEFAULT_NS)).is_err());
        let mut d = Namespace::new(DEFAULT_NS);
        d.annotations
            .insert("virga.quota.functions".into(), "3".into());
        s.update_namespace(&d).unwrap();
        assert!(matches!(
            s.update_namespace(&Namespace::new("nope")),
            Err(StoreError::NotFound { .. })
        ));
        drop(s);
        let s = Store::open(dir.path(), key()).unwrap();
        let names: Vec<_> = s
            .namespaces()
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
        assert_eq!(names, [DEFAULT_NS, "team-a"]);
        assert_eq!(
            s.namespace(DEFAULT_NS).unwrap().unwrap().annotations.len(),
            1
        );
        assert!(s.delete_namespace("team-a").unwrap());
        assert!(!s.delete_namespace("team-a").unwrap());
    }

    const DEFAULT_NS: &str = virga_types::DEFAULT_NAMESPACE;
}
