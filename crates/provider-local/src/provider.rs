//! [`LocalProvider`] behind the provider seam (`virga_provider::Provider`), which is all the
//! gateway and the autoscaler see of it.

use futures_util::future::BoxFuture;
use virga_metrics::FunctionGauges;
use virga_provider::{FunctionLoad, Lease, Provider, ProviderError};
use virga_store::StoredFunction;

use crate::LocalProvider;

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "virga-local"
    }
    fn isolation(&self) -> &'static str {
        LocalProvider::isolation(self)
    }
    fn restore(&self) -> Result<usize, ProviderError> {
        LocalProvider::restore(self)
    }
    fn deploy(&self, f: &StoredFunction) -> Result<(), ProviderError> {
        LocalProvider::deploy(self, f)
    }
    fn remove(&self, name: &str) {
        LocalProvider::remove(self, name)
    }
    fn scale(&self, name: &str, replicas: u64) -> Result<(), ProviderError> {
        LocalProvider::scale(self, name, replicas)
    }
    fn replicas(&self, name: &str) -> (u64, u64) {
        LocalProvider::replicas(self, name)
    }
    fn contains(&self, name: &str) -> bool {
        LocalProvider::contains(self, name)
    }
    fn lease<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lease, ProviderError>> {
        Box::pin(LocalProvider::lease(self, name))
    }
    fn gauges(&self) -> Vec<FunctionGauges> {
        LocalProvider::gauges(self)
    }
    fn loads(&self) -> Vec<FunctionLoad> {
        LocalProvider::loads(self)
    }
    fn autoscale(&self, name: &str, replicas: u64) {
        LocalProvider::autoscale(self, name, replicas)
    }
    fn scale_idle_to_zero(&self, name: &str, arrivals: u64) -> bool {
        LocalProvider::scale_idle_to_zero(self, name, arrivals)
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(LocalProvider::shutdown(self))
    }
}
