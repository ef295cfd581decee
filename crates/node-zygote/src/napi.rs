//! The few Node-API and libuv entry points the addon uses, declared by hand: they are
//! resolved against the running `node` (or its libnode/libuv) when the addon is loaded,
//! so nothing is linked at build time.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

/// `napi_env`: the calling JavaScript environment.
pub(crate) type napi_env = *mut c_void;
/// `napi_value`: a handle to a JavaScript value.
pub(crate) type napi_value = *mut c_void;
/// `napi_callback_info`: the arguments of a native call.
pub(crate) type napi_callback_info = *mut c_void;
/// `napi_status`: 0 is `napi_ok`.
pub(crate) type napi_status = c_int;
/// A native function callable from JavaScript.
pub(crate) type napi_callback = unsafe extern "C" fn(napi_env, napi_callback_info) -> napi_value;

extern "C" {
    pub(crate) fn napi_create_function(
        env: napi_env,
        name: *const c_char,
        length: usize,
        cb: napi_callback,
        data: *mut c_void,
        result: *mut napi_value,
    ) -> napi_status;
    pub(crate) fn napi_set_named_property(
        env: napi_env,
        object: napi_value,
        name: *const c_char,
        value: napi_value,
    ) -> napi_status;
    pub(crate) fn napi_get_cb_info(
        env: napi_env,
        info: napi_callback_info,
        argc: *mut usize,
        argv: *mut napi_value,
        this: *mut napi_value,
        data: *mut *mut c_void,
    ) -> napi_status;
    pub(crate) fn napi_get_value_string_utf8(
        env: napi_env,
        value: napi_value,
        buf: *mut c_char,
        bufsize: usize,
        result: *mut usize,
    ) -> napi_status;
    pub(crate) fn napi_create_string_utf8(
        env: napi_env,
        s: *const c_char,
        length: usize,
        result: *mut napi_value,
    ) -> napi_status;
    pub(crate) fn napi_create_int32(
        env: napi_env,
        value: i32,
        result: *mut napi_value,
    ) -> napi_status;
    pub(crate) fn napi_get_value_int32(
        env: napi_env,
        value: napi_value,
        result: *mut i32,
    ) -> napi_status;
    pub(crate) fn napi_throw_error(
        env: napi_env,
        code: *const c_char,
        msg: *const c_char,
    ) -> napi_status;
    pub(crate) fn napi_get_uv_event_loop(env: napi_env, uv_loop: *mut *mut c_void) -> napi_status;
    /// Re-creates the event loop's kernel state (epoll, wake-up fds) in a forked child.
    pub(crate) fn uv_loop_fork(uv_loop: *mut c_void) -> c_int;
}
