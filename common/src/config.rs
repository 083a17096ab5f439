//! Helpers shared by the daemons' configuration: a TOML file whose values flags and `DFS_*`
//! environment variables override, and the TLS file locations every party needs.

use crate::error::FsError;
use crate::net::tls::TlsPaths;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Reads a TOML config file into `T`; a missing `path` gives `T::default()`.
pub fn load_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, FsError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| FsError::invalid(format!("config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| FsError::invalid(format!("config {}: {e}", path.display())))
}

/// Resolves TLS files: explicit paths win, else `certs_dir/{ca.pem, NAME.pem, NAME.key}`.
pub fn tls_paths(
    certs_dir: Option<PathBuf>,
    name: &str,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<TlsPaths, FsError> {
    let from_dir = certs_dir.as_deref().map(|d| TlsPaths::in_dir(d, name));
    let pick = |explicit: Option<PathBuf>, from_dir: Option<PathBuf>, what: &str| {
        explicit.or(from_dir).ok_or_else(|| {
            FsError::invalid(format!(
                "no TLS {what} given: pass --certs DIR (made by `dfs cert init`) or --tls-{what}"
            ))
        })
    };
    Ok(TlsPaths {
        ca: pick(ca, from_dir.as_ref().map(|p| p.ca.clone()), "ca")?,
        cert: pick(cert, from_dir.as_ref().map(|p| p.cert.clone()), "cert")?,
        key: pick(key, from_dir.as_ref().map(|p| p.key.clone()), "key")?,
    })
}

/// The first of `names` whose certificate (`NAME.pem`) is in `dir`, else the first name:
/// the CLI prefers `admin`, a mount `client`, and either works with what `dfs cert init` made.
pub fn pick_identity<'a>(dir: &Path, names: &[&'a str]) -> &'a str {
    names
        .iter()
        .find(|n| dir.join(format!("{n}.pem")).exists())
        .unwrap_or(&names[0])
}

/// The HTTP address of a daemon: `off` for none, an address, or by default the QUIC listen
/// address (the same port number, on TCP), on loopback if that address is a wildcard.
pub fn http_addr(value: Option<String>, listen: SocketAddr) -> Result<Option<SocketAddr>, FsError> {
    match value.as_deref().map(str::trim) {
        // The status page and metrics are not authenticated: unless asked for, they are served
        // on loopback when the daemon listens on every interface, and otherwise on the one
        // address it listens on.
        None if listen.ip().is_unspecified() => Ok(Some(SocketAddr::new(
            if listen.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            listen.port(),
        ))),
        None => Ok(Some(listen)),
        Some("off" | "none" | "") => Ok(None),
        Some(addr) => addr
            .parse()
            .map(Some)
            .map_err(|_| FsError::invalid(format!("bad HTTP address {addr:?}: HOST:PORT or off"))),
    }
}

/// Formats bytes in binary units for people: `1536` → `1.5 KiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a size such as `4M`, `512k`, `10G` or `1048576` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let unit = s[i..].trim().to_ascii_lowercase();
            let mult = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => return Err(format!("bad size {s:?}: unknown unit")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad size {s:?}: expected a number with an optional K/M/G/T unit"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_default_is_loopback_for_a_wildcard_listener() {
        let wildcard: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        assert_eq!(
            http_addr(None, wildcard).unwrap(),
            Some("127.0.0.1:7000".parse().unwrap())
        );
        let v6: SocketAddr = "[::]:7000".parse().unwrap();
        assert_eq!(
            http_addr(None, v6).unwrap(),
            Some("[::1]:7000".parse().unwrap())
        );
        let one: SocketAddr = "10.1.2.3:7100".parse().unwrap();
        assert_eq!(http_addr(None, one).unwrap(), Some(one));
        assert_eq!(
            http_addr(Some("0.0.0.0:9000".into()), wildcard).unwrap(),
            Some("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(http_addr(Some("off".into()), wildcard).unwrap(), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
