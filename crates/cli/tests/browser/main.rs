//! The web console in headless Chromium against the real `virga up`: its pages and edits
//! (console), and its own origin that function pages cannot reach (console_origin).

mod console;
mod console_origin;
