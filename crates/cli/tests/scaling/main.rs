//! Instances coming and going on the real `virga up`: the autoscaler, scale to zero, retries
//! and capacity (scaling), and cold starts from the warm pool and the zygotes (warm_pool).

mod scaling;
mod warm_pool;
