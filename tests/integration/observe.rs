//! Observability against real processes: the Prometheus endpoints of the metadata server, a
//! chunk server and a mount parse and move with I/O, and the status page shows the cluster as
//! it is when loaded in headless Chromium.

use crate::mount::cluster_with_volume;
use dfs_tests::process::{free_tcp_port, Mount, ProcessCluster};
use dfs_tests::random_bytes;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// A mount of `volume` with its fault points enabled (`DFS_FAULTS=enabled`), serving them and
/// its metrics on a port of its own, with `options` besides; gives the mount and that address.
pub(crate) fn mount_with_faults(
    cluster: &ProcessCluster,
    volume: &str,
    name: &str,
    options: &str,
) -> (Mount, SocketAddr) {
    let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let options = match options {
        "" => format!("metrics={http}"),
        more => format!("{more},metrics={http}"),
    };
    let env = [("DFS_FAULTS", "enabled")];
    let mount = Mount::with_env(cluster, volume, name, &options, &env).unwrap();
    (mount, http)
}

/// Drives fault point `point` of a mount serving metrics at `http` (`DFS_FAULTS=enabled`):
/// `verb` is pause, release, disarm, hits, ...; gives the answer's body.
pub(crate) fn mount_fault(http: SocketAddr, point: &str, verb: &str) -> String {
    let (status, body) = http_get(http, &format!("/faults/{point}/{verb}"));
    assert_eq!(status, 200, "{body}");
    body
}

/// One GET over HTTP/1.0; returns the status code and the body.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// Parses the Prometheus/OpenMetrics text format strictly enough to catch a malformed page:
/// every sample is `name{labels} value`, every metric has a TYPE, the page ends with `# EOF`.
/// Returns the samples by `name{labels}`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
    let mut typed = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                ["counter", "gauge", "histogram", "unknown"].contains(&kind),
                "{line}"
            );
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "bad labels in {line:?}"
            );
        }
        assert!(
            typed.iter().any(|t| name.starts_with(t.as_str())),
            "sample without a TYPE: {line:?}"
        );
        samples.insert(series.to_string(), value);
    }
    samples
}

pub(crate) fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_metrics(&body)
}

pub(crate) fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// The value of `series`, which the process at `addr` must export (a missing series fails
/// the test rather than reading as 0).
pub(crate) fn required_value(addr: SocketAddr, series: &str) -> f64 {
    *scrape(addr)
        .get(series)
        .unwrap_or_else(|| panic!("{series} is missing from the metrics"))
}

#[test]
fn metrics_parse_and_move_with_io() {
    let cluster = cluster_with_volume();
    let out = cluster
        .cli()
        .args([
            "volume",
            "create",
            "q",
            "--quota-bytes",
            "1G",
            "--quota-inodes",
            "9",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let fuse_http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let m = Mount::new(&cluster, "default", "m", &format!("metrics={fuse_http}")).unwrap();
    let chunk_http: Vec<SocketAddr> = (0..6).map(|i| cluster.chunk_http[&i]).collect();

    let meta_before = scrape(cluster.meta_http);
    let chunks_before: Vec<_> = chunk_http.iter().map(|&a| scrape(a)).collect();
    let fuse_before = scrape(fuse_http);

    let data = random_bytes(8 << 20, 3);
    std::fs::write(m.path("f"), &data).unwrap();
    // Read back through the mount, not from the pages the kernel kept from the write.
    let f = std::fs::File::open(m.path("f")).unwrap();
    crate::mount::fadvise(&f, libc::POSIX_FADV_DONTNEED).unwrap();
    assert!(std::fs::read(m.path("f")).unwrap() == data);
    drop(f);

    let meta = scrape(cluster.meta_http);
    let commits = "dfs_meta_requests_total{op=\"CommitWrite\"}";
    assert!(
        value(&meta, commits) > value(&meta_before, commits),
        "{meta:?}"
    );
    assert!(value(&meta, "dfs_meta_seconds_count{op=\"CommitWrite\"}") >= 1.0);
    assert_eq!(value(&meta, "dfs_meta_servers{state=\"up\"}"), 6.0);
    assert_eq!(
        value(&meta, "dfs_meta_volume_used_bytes{volume=\"default\"}"),
        data.len() as f64
    );
    assert!(value(&meta, "dfs_meta_capacity_bytes{kind=\"total\"}") > 0.0);

    // 4+2: the chunk servers together received the data plus half again in parity.
    let received: f64 = chunk_http
        .iter()
        .zip(&chunks_before)
        .map(|(&a, before)| {
            let now = scrape(a);
            value(&now, "dfs_chunk_received_bytes_total")
                - value(before, "dfs_chunk_received_bytes_total")
        })
        .sum();
    assert!(
        received >= data.len() as f64 * 1.5,
        "chunk servers received {received} bytes"
    );
    let chunk0 = scrape(chunk_http[0]);
    assert!(value(&chunk0, "dfs_chunk_store{what=\"shards\"}") >= 1.0);
    assert!(value(&chunk0, "dfs_chunk_requests_total{op=\"Put\"}") >= 1.0);

    let fuse = scrape(fuse_http);
    let written = value(&fuse, "dfs_fuse_written_bytes_total")
        - value(&fuse_before, "dfs_fuse_written_bytes_total");
    assert_eq!(written, data.len() as f64);
    assert!(
        value(&fuse, "dfs_fuse_read_bytes_total") >= data.len() as f64,
        "{fuse:?}"
    );
    assert!(value(&fuse, "dfs_fuse_requests_total{op=\"write\"}") >= 1.0);
    assert!(value(&fuse, "dfs_fuse_seconds_count{op=\"lookup\"}") >= 1.0);

    // Every metric the Grafana dashboard plots exists.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana-dashboard.json"),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let all: Vec<&String> = meta
        .keys()
        .chain(chunk0.keys())
        .chain(fuse.keys())
        .collect();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("dfs_"))
            {
                assert!(
                    all.iter().any(|series| series.starts_with(name)),
                    "dashboard panel {:?} uses {name}, which no endpoint serves",
                    panel["title"]
                );
            }
        }
    }

    // Other paths are 404, and the status page is HTML.
    assert_eq!(http_get(cluster.meta_http, "/nope").0, 404);
    assert_eq!(http_get(chunk_http[0], "/").0, 404);
    let (status, page) = http_get(cluster.meta_http, "/");
    assert_eq!(status, 200);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
}

/// Loads `url` in headless Chromium and returns the DOM it rendered.
fn chromium_dom(url: &str, profile: &std::path::Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--timeout=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium is missing: install Debian's chromium package (scripts/test.sh does)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text of every cell of table `id`, row by row.
fn table_rows(dom: &str, id: &str) -> Vec<Vec<String>> {
    let start = dom
        .find(&format!("<table id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no table {id} in {dom}"));
    let end = start + dom[start..].find("</table>").unwrap();
    let body = &dom[start..end];
    let body = &body[body.find("<tbody>").unwrap()..];
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td>")
                .skip(1)
                .map(|cell| cell.split("</td>").next().unwrap().to_string())
                .collect()
        })
        .collect()
}

fn span(dom: &str, id: &str) -> String {
    let open = format!("<span id=\"{id}\">");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no {id} in {dom}"))
        + open.len();
    dom[start..].split("</span>").next().unwrap().to_string()
}

#[test]
fn status_page_in_headless_chromium() {
    let mut cluster = cluster_with_volume();
    let ok = |args: &[&str]| {
        let out = cluster.cli().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    ok(&[
        "volume",
        "create",
        "limited",
        "--ec",
        "2+1",
        "--quota-bytes",
        "1G",
        "--quota-inodes",
        "100",
    ]);
    let m = Mount::new(&cluster, "default", "m", "").unwrap();
    std::fs::write(m.path("f"), random_bytes(3 << 20, 5)).unwrap();
    drop(m);
    let down_id = cluster.chunk_id(5);
    cluster.kill_chunk(5);
    let url = format!("http://{}/", cluster.meta_http);
    let profile = cluster.dir.path().join("chromium-profile");

    // Wait until the cluster itself reports the server down, then load the page.
    let deadline = Instant::now() + Duration::from_secs(60);
    let dom = loop {
        let dom = chromium_dom(&url, &profile);
        if span(&dom, "servers-up") == "5" {
            break dom;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the dead server\n{dom}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(span(&dom, "servers-total"), "6");
    assert!(
        dom.contains("<meta http-equiv=\"refresh\""),
        "the page must refresh itself"
    );
    let servers = table_rows(&dom, "servers");
    assert_eq!(servers.len(), 6, "{servers:?}");
    let down: Vec<_> = servers.iter().filter(|r| r[2] == "down").collect();
    assert_eq!(down.len(), 1, "{servers:?}");
    assert_eq!(down[0][0], down_id.to_string());
    let volumes = table_rows(&dom, "volumes");
    let row = |name: &str| {
        volumes
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no volume {name} in {volumes:?}"))
            .clone()
    };
    assert_eq!(row("default")[1], "4+2");
    assert_eq!(row("default")[2], "3.0 MiB");
    assert_eq!(row("limited")[1], "2+1");
    assert_eq!(row("limited")[3], "1.0 GiB");
    assert_eq!(row("limited")[5], "100");
    let blocks = table_rows(&dom, "blocks");
    let total: u64 = blocks[0].iter().map(|c| c.parse::<u64>().unwrap()).sum();
    assert!(total >= 1, "{blocks:?}");
    assert_eq!(table_rows(&dom, "repair")[0].len(), 6);
}

/// Asking a file without extended attributes for one (the kernel does before every write, `ls
/// -l` for every entry) costs no metadata call: its attributes say it has none. A file that
/// has one still answers.
#[test]
fn xattr_questions_about_bare_files_stay_in_the_mount() {
    use crate::sharing::{get_xattr, set_xattr};
    let cluster = cluster_with_volume();
    let asked = |cluster: &dfs_tests::process::ProcessCluster| {
        value(
            &scrape(cluster.meta_http),
            "dfs_meta_requests_total{op=\"GetXattr\"}",
        )
    };
    let writer = Mount::new(&cluster, "default", "w", "").unwrap();
    let before = asked(&cluster);
    // The kernel asks for `security.capability` at a new file's first write: the create's
    // reply already said the file has no extended attribute.
    for i in 0..20 {
        std::fs::write(writer.path(&format!("f{i}")), b"x").unwrap();
    }
    std::fs::write(writer.path("tagged"), b"y").unwrap();
    assert_eq!(
        asked(&cluster),
        before,
        "writes of new files asked the server"
    );
    set_xattr(&writer.path("tagged"), "user.tag", b"v").unwrap();
    // Another mount learns the files' attributes by looking them up.
    let reader = Mount::new(&cluster, "default", "r", "attr_timeout=30").unwrap();
    for i in 0..20 {
        let path = reader.path(&format!("f{i}"));
        std::fs::metadata(&path).unwrap();
        for name in ["security.selinux", "user.tag"] {
            let err = get_xattr(&path, name).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENODATA), "{name}: {err}");
        }
    }
    assert_eq!(
        asked(&cluster),
        before,
        "questions about bare files reached the server"
    );
    std::fs::metadata(reader.path("tagged")).unwrap();
    assert_eq!(get_xattr(&reader.path("tagged"), "user.tag").unwrap(), b"v");
    assert!(asked(&cluster) > before);
}
