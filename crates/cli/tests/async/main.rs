//! Async calls end to end against the real `virga up`, over real HTTP, once per queue backend
//! (embedded log and a real nats-server with JetStream): 202 + call id, callbacks, retries with
//! backoff, dead letters, named queues, bad input, and a kill -9 crash test.

mod cases;
#[path = "../common/mod.rs"]
mod common;
mod crash;
mod support;

/// Generate `NAME::embedded` and `NAME::nats` tests running `body(backend)`.
macro_rules! both_backends {
    ($($name:ident => $body:path;)*) => {$(
        mod $name {
            #[test]
            fn embedded() {
                $body(crate::support::Backend::Embedded)
            }
            #[test]
            fn nats() {
                $body(crate::support::Backend::Nats)
            }
        }
    )*};
}

both_backends! {
    accepts_with_202_and_call_id => crate::cases::accepts_with_202_and_call_id;
    callback_gets_body_and_headers => crate::cases::callback_gets_body_and_headers;
    retries_503_with_backoff_then_succeeds => crate::cases::retries_503_with_backoff_then_succeeds;
    dead_letters_list_retry_purge => crate::cases::dead_letters_list_retry_purge;
    named_queue_isolation => crate::cases::named_queue_isolation;
    bad_input => crate::cases::bad_input;
    crash_kill9_delivers_every_accepted_call => crate::crash::kill9_delivers_every_accepted_call;
}
