//! Async calls end to end against the real `virga up`, over real HTTP, once per queue backend
//! (embedded log and a real nats-server with JetStream): 202 + call id, callbacks, retries with
//! backoff, dead letters, named queues, bad input, limits, a kill -9 crash test, durable
//! callbacks (kill -9 loop, receiver outage), and the embedded backend's memory, callback
//! address policy, HTTPS callbacks and invocation counting.

mod cases;
mod crash;
mod durable;
mod guards;
mod support;
mod tls;

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
    callbacks_survive_a_kill9_loop => crate::durable::callbacks_survive_a_kill9_loop;
    callbacks_outlast_a_receiver_outage => crate::durable::callbacks_outlast_a_receiver_outage;
    undeliverable_callback_is_a_dead_letter =>
        crate::durable::an_undeliverable_callback_is_a_dead_letter_with_its_result;
    limits_answer_429 => crate::guards::limits_answer_429;
}

#[test]
fn restart_waits_for_a_lock_left_by_a_dying_child() {
    crash::restart_waits_for_a_lock_left_by_a_dying_child();
}

#[test]
fn callbacks_to_internal_addresses_are_refused() {
    guards::callbacks_to_internal_addresses_are_refused();
}

#[test]
fn redirects_to_refused_addresses_are_not_followed() {
    guards::redirects_to_refused_addresses_are_not_followed();
}

#[test]
fn bytes_are_limited_per_function() {
    guards::bytes_are_limited_per_function();
}

#[test]
fn large_calls_stay_on_disk_across_a_restart() {
    guards::large_calls_stay_on_disk_across_a_restart();
}

#[test]
fn deliveries_count_as_invocations() {
    guards::deliveries_count_as_invocations();
}

#[test]
fn https_callbacks_are_verified_with_the_system_roots() {
    tls::https_callbacks_are_verified_with_the_system_roots();
}
