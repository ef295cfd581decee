//! Pull timing for benchmarks (against `skopeo copy docker://REF oci:DIR`), and a way to make
//! the image to time:
//!
//!   oci_pull pull STORE_DIR REFERENCE     pull and unpack into a fresh or warm store
//!   oci_pull push REFERENCE DIR...        build one layer per DIR, push it as REFERENCE

use std::path::Path;
use std::time::Instant;

use virga_oci::{ImageSpec, Images, Options};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, store, reference] if cmd == "pull" => {
            let images = Images::open(Path::new(store), Options::default())?;
            let start = Instant::now();
            let image = images.pull(reference, None, None).await?;
            let secs = start.elapsed().as_secs_f64();
            let listed = images.list()?;
            let item = listed.iter().find(|i| i.digest == image.digest);
            let (size, unpacked) = item.map_or((0, 0), |i| (i.size, i.unpacked_size));
            println!(
                "pulled {reference} in {secs:.3}s: {} layers, {size} bytes stored, {unpacked} unpacked",
                image.layers.len()
            );
        }
        [cmd, reference, dirs @ ..] if cmd == "push" && !dirs.is_empty() => {
            let tmp = std::env::temp_dir().join(format!("oci-pull-build-{}", std::process::id()));
            let images = Images::open(&tmp, Options::default())?;
            let mut layers = Vec::new();
            for dir in dirs {
                layers.push(images.build_layer(Path::new(dir), dir.trim_start_matches('/'))?);
            }
            let digest = images.build_image(&ImageSpec {
                layers,
                ..ImageSpec::default()
            })?;
            let pushed = images.push(&digest, reference, None, None).await?;
            std::fs::remove_dir_all(&tmp)?;
            println!("pushed {} as {}", pushed.digest, pushed.reference);
        }
        _ => {
            eprintln!("usage: oci_pull pull STORE_DIR REFERENCE | oci_pull push REFERENCE DIR...");
            std::process::exit(2);
        }
    }
    Ok(())
}
