//! temporary benchmark
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

fn bare(n: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        let mut c = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&[b'x'; 100]).unwrap();
        let mut out = Vec::new();
        c.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        c.wait().unwrap();
    }
    t.elapsed().as_secs_f64() / n as f64
}

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap();
    let n = 2000;
    let client = reqwest::Client::new();
    for _ in 0..50 {
        client
            .post(format!("http://{addr}/"))
            .body(vec![b'x'; 100])
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    for _ in 0..3 {
        let (mut b, mut w) = (0.0, 0.0);
        for _ in 0..40 {
            b += bare(50);
            let t = Instant::now();
            for _ in 0..50 {
                client
                    .post(format!("http://{addr}/"))
                    .body(vec![b'x'; 100])
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap();
            }
            w += t.elapsed().as_secs_f64() / 50.0;
        }
        println!(
            "watchdog {:.0}us bare {:.0}us ratio {:.2}",
            w / 40.0 * 1e6,
            b / 40.0 * 1e6,
            w / b
        );
    }
}
