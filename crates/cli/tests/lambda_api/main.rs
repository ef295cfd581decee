//! The AWS Lambda API of the real `virga up`, driven by the real boto3 (PyPI) with
//! `endpoint_url` = the gateway: Invoke (RequestResponse, DryRun, Event delivered, retried and
//! dead-lettered), SigV4 refusals, errors in Lambda's shapes, ListFunctions paging and
//! GetFunction, with ordinary OpenFaaS functions and a real Lambda function (runtime), and
//! access-key tokens (tokens).

mod invoke;
mod manage;
mod runtime;
mod tokens;

use std::path::Path;

use virga_testkit::{boto3, Platform, PASSWORD};

/// Run a boto3 script (see `virga_testkit::boto3`) against `p` with the admin credentials.
pub fn sdk(p: &Platform, dir: &Path, body: &str) -> serde_json::Value {
    boto3::run(dir, &p.url, "admin", PASSWORD, body)
}
