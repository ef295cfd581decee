//! Long-lived connections through the real `virga up` (issue 17): WebSockets and other
//! HTTP/1.1 upgrades end to end, their limits and their drain (websockets).

mod websockets;
