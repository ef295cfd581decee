//! Image pulls per function, as `GET /system/function/NAME` shows them (`imagePull`): under
//! way (layers and bytes so far) while a deploy's or a start's pull runs, or why the last one
//! failed; each step also goes to the function's log (`virga logs NAME`), as instance
//! output does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use virga_logs::LogHub;
use virga_oci::{Progress, ProgressFn};
use virga_types::ImagePull;

/// The log "instance" pull lines are recorded under.
const LOG_SOURCE: &str = "image-pull";

/// Pulls under way or failed, by function name.
pub struct Pulls {
    states: Mutex<HashMap<String, ImagePull>>,
    logs: Arc<LogHub>,
}

impl Pulls {
    /// No pulls yet; steps are logged to `logs`.
    pub fn new(logs: Arc<LogHub>) -> Arc<Pulls> {
        Arc::new(Pulls {
            states: Mutex::new(HashMap::new()),
            logs,
        })
    }

    /// Record that `function` pulls `image`; the callback to hand the pull, which keeps the
    /// progress and logs each finished layer.
    pub fn start(self: &Arc<Self>, function: &str, image: &str) -> ProgressFn {
        self.set(function, pulling(image, &Progress::default()));
        self.log(function, &format!("pulling image {image}"));
        let (me, function, image) = (self.clone(), function.to_string(), image.to_string());
        Arc::new(move |p: &Progress| {
            // Called for every chunk: update in place, log only when a layer finished.
            let layer_done = match me.lock().get_mut(&function) {
                Some(s) => {
                    let done = p.layers_done as u64 != s.layers_done;
                    s.layers_done = p.layers_done as u64;
                    s.layers_total = p.layers_total as u64;
                    s.bytes_done = p.bytes_done;
                    s.bytes_total = p.bytes_total;
                    done
                }
                None => false,
            };
            if layer_done {
                me.log(
                    &function,
                    &format!(
                        "pulling image {image}: {}/{} layers, {} of {} bytes",
                        p.layers_done, p.layers_total, p.bytes_done, p.bytes_total
                    ),
                );
            }
        })
    }

    /// `function`'s pull succeeded: nothing to show any more.
    pub fn done(&self, function: &str, image: &str) {
        self.lock().remove(function);
        self.log(function, &format!("pulled image {image}"));
    }

    /// `function`'s pull of `image` failed with `error`.
    pub fn failed(&self, function: &str, image: &str, error: &str) {
        self.set(
            function,
            ImagePull {
                state: "failed".into(),
                image: image.to_string(),
                error: Some(error.to_string()),
                ..ImagePull::default()
            },
        );
        self.log(function, &format!("pulling image {image} failed: {error}"));
    }

    /// What `function`'s pull is, if one is under way or failed.
    pub fn get(&self, function: &str) -> Option<ImagePull> {
        self.lock().get(function).cloned()
    }

    fn set(&self, function: &str, state: ImagePull) {
        self.lock().insert(function.to_string(), state);
    }

    fn log(&self, function: &str, line: &str) {
        self.logs.function(function).push(LOG_SOURCE, line);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ImagePull>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Pulls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pulls")
            .field("states", &*self.lock())
            .finish()
    }
}

fn pulling(image: &str, p: &Progress) -> ImagePull {
    ImagePull {
        state: "pulling".into(),
        image: image.to_string(),
        layers_done: p.layers_done as u64,
        layers_total: p.layers_total as u64,
        bytes_done: p.bytes_done,
        bytes_total: p.bytes_total,
        error: None,
    }
}
