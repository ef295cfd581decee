//! A Node.js addon that makes the node template's runtime a zygote (pre-forked
//! interpreter). Node has no fork(), so this addon provides one: `zygote(socketPath)`, called
//! once the template's libraries are loaded, never returns in the calling process. It
//! listens on `socketPath` and, for each request, forks; the call returns in the child, with
//! the request (one line of JSON: the runtime's directory and environment), and the child goes
//! on to load the function and serve it. The interpreter's start is not paid again.
//!
//! The protocol is the python3-http zygote's (see `virga-watchdog --zygote`): the client
//! sends its stdout and stderr with the request, the child gets them as fds 1 and 2; the
//! connection lives as long as the child (client gone: the child's group is killed; child
//! gone: its exit code is written back).
//!
//! What makes a node process safe to fork here: the parent never runs JavaScript again after
//! the call (so its event loop and V8 heap are frozen in a consistent state); the child
//! rebuilds libuv's kernel state with `uv_loop_fork` before returning to JavaScript; the
//! zygote's own descriptors sit at or above [`HIGH_FD`] so the child closes them without
//! touching node's internal ones. V8's background threads are not copied by fork(2), so the
//! runtime is started with `--single-threaded` (V8 then runs its GC and compiler tasks on the
//! main thread and never waits for a worker).

mod napi;
mod server;

use std::ffi::{c_char, CString};
use std::ptr;

use napi::*;

/// The zygote's listener and connections are moved at or above this descriptor number.
pub(crate) const HIGH_FD: i32 = 900;

/// Registers the module's exports (`zygote`); called by node when the addon is loaded.
///
/// # Safety
/// Called by node with a valid environment and exports object.
#[no_mangle]
pub unsafe extern "C" fn napi_register_module_v1(env: napi_env, exports: napi_value) -> napi_value {
    // SAFETY: node passes a valid environment and exports object; the names are NUL-terminated and outlive the calls.
    unsafe {
        let functions: [(&std::ffi::CStr, napi_callback); 3] =
            [(c"zygote", js_zygote), (c"pid", js_pid), (c"exit", js_exit)];
        for (name, cb) in functions {
            let mut f = ptr::null_mut();
            let len = name.to_bytes().len();
            if napi_create_function(env, name.as_ptr(), len, cb, ptr::null_mut(), &mut f) == 0 {
                napi_set_named_property(env, exports, name.as_ptr(), f);
            }
        }
        exports
    }
}

/// `pid()`: this process's id (node caches `process.pid` at start, so a forked runtime
/// corrects it with this).
unsafe extern "C" fn js_pid(env: napi_env, _info: napi_callback_info) -> napi_value {
    // SAFETY: node passes a valid environment; `out` is a valid out-pointer.
    unsafe {
        let mut out = ptr::null_mut();
        napi_create_int32(env, libc::getpid(), &mut out);
        out
    }
}

/// `zygote(socketPath)`: serve fork requests forever; returns the request line in each child.
unsafe extern "C" fn js_zygote(env: napi_env, info: napi_callback_info) -> napi_value {
    // SAFETY: node passes a valid environment and callback info; every buffer and out-pointer handed to N-API or libuv is valid for the call, and the string buffer's length is what it holds.
    unsafe {
        let Some(arg) = first_arg(env, info) else {
            return throw(env, "zygote(socketPath) needs the socket's path");
        };
        let mut buf = vec![0u8; 4096];
        let mut len = 0usize;
        if napi_get_value_string_utf8(env, arg, buf.as_mut_ptr().cast(), buf.len(), &mut len) != 0 {
            return throw(env, "zygote(socketPath): the path must be a string");
        }
        buf.truncate(len);
        let path = String::from_utf8_lossy(&buf).into_owned();
        let mut uv_loop = ptr::null_mut();
        if napi_get_uv_event_loop(env, &mut uv_loop) != 0 || uv_loop.is_null() {
            return throw(env, "zygote: no event loop");
        }
        match server::serve(&path) {
            Ok(request) => {
                if uv_loop_fork(uv_loop) != 0 {
                    return throw(env, "zygote: uv_loop_fork failed in the forked runtime");
                }
                let mut out = ptr::null_mut();
                napi_create_string_utf8(env, request.as_ptr().cast(), request.len(), &mut out);
                out
            }
            Err(e) => throw(env, &format!("zygote at {path}: {e}")),
        }
    }
}

/// `exit(code)`: ends a forked runtime at once. Node's own exit path tears down V8's worker
/// threads, which a forked child does not have, so forked runtimes exit through here.
unsafe extern "C" fn js_exit(env: napi_env, info: napi_callback_info) -> napi_value {
    // SAFETY: node passes a valid environment and callback info; `_exit` ends the process without running anything else.
    unsafe {
        let mut code = 0i32;
        if let Some(arg) = first_arg(env, info) {
            napi_get_value_int32(env, arg, &mut code);
        }
        libc::_exit(code)
    }
}

/// The first argument of a native call, if it was given one.
unsafe fn first_arg(env: napi_env, info: napi_callback_info) -> Option<napi_value> {
    // SAFETY: the caller passes the environment and callback info node gave it; argc/argv describe one slot.
    unsafe {
        let mut argc = 1usize;
        let mut argv = [ptr::null_mut(); 1];
        let status = napi_get_cb_info(
            env,
            info,
            &mut argc,
            argv.as_mut_ptr(),
            ptr::null_mut(),
            ptr::null_mut(),
        );
        (status == 0 && argc >= 1).then_some(argv[0])
    }
}

/// Throws a JavaScript error with `msg`; returns the `undefined` placeholder (null).
unsafe fn throw(env: napi_env, msg: &str) -> napi_value {
    // SAFETY: the caller passes a valid environment; the message is NUL-terminated and lives for the call.
    unsafe {
        let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
        napi_throw_error(env, ptr::null::<c_char>(), msg.as_ptr());
        ptr::null_mut()
    }
}
