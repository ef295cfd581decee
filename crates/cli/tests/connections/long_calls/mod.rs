//! Issue 17's long calls: streamed answers and bodies (streaming), calls longer than the
//! gateway's timeouts and TCP keep-alive (timeouts), async calls that outlive the queue's
//! redelivery window (queued), and the calls in progress (in_progress).

mod in_progress;
mod queued;
mod streaming;
mod support;
mod timeouts;
