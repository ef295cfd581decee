//! Long-lived connections: gRPC unary calls over HTTP/2 through the gateway against the same
//! calls made directly on a standalone watchdog in the same run (grpc).

mod grpc;

use anyhow::Result;

use crate::report::Section;

use super::Ctx;

/// Name for `--only`.
pub const NAME: &str = "connections";

/// Section heading.
pub const TITLE: &str = "Long-lived connections: gRPC";

/// What the figures mean.
pub const ABOUT: &str = grpc::ABOUT;

/// Measures every figure of the group.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    grpc::run(ctx, s)
}
