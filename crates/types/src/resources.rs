//! Resource quantities in Kubernetes notation, as OpenFaaS's `limits`/`requests` carry them:
//! memory like `128M`, `128Mi`, `1G`, `512k` or plain bytes; CPU like `0.5`, `500m` or `2`.

/// Memory limit of an instance whose function sets none (256 MiB).
pub const DEFAULT_MEMORY_LIMIT: u64 = 256 << 20;

/// Bytes in a memory quantity, or a message saying what is wrong.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a memory size like 128M or 1Gi"))?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use k, M, G, Ki, Mi or Gi)"
            ))
        }
    };
    let bytes = n * mult;
    if !(bytes.is_finite() && bytes >= 4.0 * 1024.0 * 1024.0) {
        return Err(format!("{s:?} is too small: give at least 4Mi"));
    }
    Ok(bytes as u64)
}

/// Cores in a CPU quantity, or a message saying what is wrong.
pub fn parse_cpu(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let cores = match s.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a CPU amount like 0.5 or 500m"))?;
    if !(cores.is_finite() && cores >= 0.01) {
        return Err(format!("{s:?} is too small: give at least 10m"));
    }
    Ok(cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quantities() {
        assert_eq!(parse_memory("128M").unwrap(), 128_000_000);
        assert_eq!(parse_memory("128Mi").unwrap(), 128 << 20);
        assert_eq!(parse_memory("1Gi").unwrap(), 1 << 30);
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("12Q").is_err());
        assert!(parse_memory("1k").is_err());
        assert_eq!(parse_cpu("0.5").unwrap(), 0.5);
        assert_eq!(parse_cpu("250m").unwrap(), 0.25);
        assert!(parse_cpu("half").is_err());
        assert!(parse_cpu("0").is_err());
    }
}
