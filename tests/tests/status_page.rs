//! The engine's status page, checked as a browser renders it (headless Chromium over the
//! DevTools protocol), and its access rules from another host.

use dfs_proto::Chunking;
use dfs_tests::browser::Browser;
use dfs_tests::netns::Net;
use dfs_tests::{pseudo_random_bytes, Cluster, ClusterOpts, Value};
use std::time::Duration;

/// The address the engine's HTTP listener says it bound, from its log.
fn http_addr(cluster: &Cluster) -> String {
    dfs_tests::http::logged_addr(&cluster.engine_stderr_log(), "status page")
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let r = dfs_tests::http::get(addr, path, &[]);
    (r.code, r.body)
}

/// A local cluster's page in Chromium: four nodes up; a put moves the file count and the
/// request chart without a reload; a node killed with kill -9 shows as down within seconds;
/// `/api/status` says what `dfs-client status --json` says. Saves a screenshot under
/// `target/artifacts/`.
#[test]
fn the_status_page_shows_the_cluster_live_in_a_browser() {
    let mut cluster = Cluster::start(
        4,
        ClusterOpts {
            engine_args: ["--http", "127.0.0.1:0", "--ping-interval-secs", "1"].map(String::from).to_vec(),
            ..ClusterOpts::default()
        },
    );
    let addr = http_addr(&cluster);
    let browser = Browser::start();
    let mut tab = browser.open(&format!("http://{addr}/"));
    let up = tab.wait_for("document.querySelectorAll('tr.node.up').length", Duration::from_secs(20), |v| v == 4);
    assert_eq!(up, 4, "four node rows, all up");
    let charts =
        tab.wait_for("document.querySelectorAll('#charts svg polyline').length", Duration::from_secs(10), |v| v == 3);
    assert_eq!(charts, 3, "the script drew the three charts");
    assert_eq!(tab.eval("document.getElementById('n-files').textContent"), "0");
    // Marks this load of the page: a reload would lose it.
    tab.eval("window.dfsMark = 'same page'");

    let ids: Vec<String> =
        (0..3).map(|i| cluster.put_bytes(&pseudo_random_bytes(i, 50_000), &format!("f{i}"), Chunking::Equal)).collect();
    let files = tab.wait_for("document.getElementById('n-files').textContent", Duration::from_secs(15), |v| v == "3");
    assert_eq!(files, "3", "the file count moves without a reload");
    let most = tab.wait_for(
        "parseFloat(document.querySelector('#charts figcaption').textContent.split(', ')[1])",
        Duration::from_secs(10),
        |v| v.as_f64().is_some_and(|x| x >= 1.0),
    );
    assert!(most.as_f64().is_some_and(|x| x >= 1.0), "the request chart moved: {most}");

    // This engine is listed, alone with its embedded metadata, running no pass.
    let this = tab.eval("document.querySelector('#engines tr.engine.this td.addr').textContent");
    assert_eq!(this, format!("{} (this one)", cluster.engine_addr()).as_str());
    assert_eq!(
        tab.eval("document.getElementById('passes').textContent"),
        "cluster passes (repair, gc, scrub): none held"
    );
    // A scrub: every node's row says what its pass found (3 files x 4 chunks x 2 copies).
    assert!(tab
        .eval("document.querySelector('tr.node td.scrub').textContent")
        .as_str()
        .is_some_and(|t| t.contains("none since")));
    let (ok, report) = cluster.client_json(&["scrub"]);
    assert!(ok, "scrub: {report}");
    let checked = tab.wait_for(
        "Array.from(document.querySelectorAll('tr.node td.scrub')).map(td => td.textContent.match(/: (\\d+) checked, 0 corrupt/)).reduce((n, m) => m ? n + parseInt(m[1]) : NaN, 0)",
        Duration::from_secs(15),
        |v| v == 24,
    );
    assert_eq!(checked, 24, "the nodes' scrub results, summed over the rows");

    // A read that finds no copy of a chunk is among the last errors.
    let lost = dfs_tests::chunk_id(&ids[0], 1);
    for node in cluster.find_copies(&ids[0], 1) {
        cluster.delete_copy(node, lost);
    }
    let err = cluster.get(&ids[0]).expect_err("every copy of chunk 1 is gone");
    assert!(dfs_tests::mentions_chunk(&err, &ids[0], 1), "{err}");
    let listed = tab.wait_for("document.getElementById('errors').textContent", Duration::from_secs(10), |v| {
        v.as_str().is_some_and(|t| t.contains(&ids[0]))
    });
    assert!(listed.as_str().is_some_and(|t| t.contains("chunk 1")), "the page lists the failed read: {listed}");

    cluster.kill_node(2);
    let down = tab.wait_for("document.querySelectorAll('tr.node.down').length", Duration::from_secs(10), |v| v == 1);
    assert_eq!(down, 1, "the killed node shows as down within seconds");
    let down_addr = tab.eval("document.querySelector('tr.node.down td.addr').textContent");
    assert_eq!(down_addr, cluster.node_addr(2));
    assert_eq!(tab.eval("window.dfsMark"), "same page", "all of this happened without a reload");

    let png = tab.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let artifacts = dfs_tests::bin_dir().join("..").join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    std::fs::write(artifacts.join("status-page.png"), &png).expect("save the screenshot");

    // The JSON endpoint agrees with the client's status.
    let (code, body) = http_get(&addr, "/api/status");
    assert_eq!(code, 200);
    let api: Value = serde_json::from_str(&body).expect("JSON");
    let (ok, cli) = cluster.client_json(&["status"]);
    assert!(ok, "status: {cli}");
    let view = |v: &Value| -> Vec<(Value, Value, Value)> {
        v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| (n["id"].clone(), n["addr"].clone(), n["up"].clone()))
            .collect()
    };
    assert_eq!(api["replicas"], cli["replicas"]);
    assert_eq!(view(&api), view(&cli), "the page's nodes are the client's");
    assert_eq!(api["files"]["n_files"], 3);
}

/// From another host of the test's own sandbox, the page and its JSON need the access key;
/// with it they answer, and never show it.
#[test]
fn the_status_page_needs_an_access_key_from_another_host() {
    let net = std::sync::Arc::new(Net::create());
    let engine_ip = net.host("engine1");
    let mut cluster = Cluster::start(
        4,
        ClusterOpts {
            net: Some(net.clone()),
            access_key: true,
            cluster_secret: true,
            engine_args: vec!["--http".into(), format!("{engine_ip}:9180")],
            ..ClusterOpts::default()
        },
    );
    let key = std::fs::read_to_string(cluster.root().join("access.key")).expect("key");
    let key = key.trim();
    let curl = |args: &[&str]| -> (String, String) {
        let out = net.command("client", "curl").args(["-s", "-m", "10", "-w", "\n%{http_code}"]).args(args).output();
        let text = String::from_utf8_lossy(&out.expect("run curl").stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_string(), body.to_string())
    };
    for path in ["/", "/live", "/api/status"] {
        let url = format!("http://{engine_ip}:9180{path}");
        let (code, _) = curl(&[url.as_str()]);
        assert_eq!(code, "401", "{path} without a key");
        let (code, _) = curl(&["-H", "Authorization: Bearer not-the-key-at-all-0123456789abcdef", &url]);
        assert_eq!(code, "401", "{path} with a wrong key");
        let (code, body) = curl(&["-H", &format!("Authorization: Bearer {key}"), &url]);
        assert_eq!(code, "200", "{path} with the key");
        assert!(!body.contains(key), "{path} must never show the key");
        // As a browser sends it: the key as the password of HTTP Basic authentication.
        let (code, _) = curl(&["-u", &format!("anyone:{key}"), &url]);
        assert_eq!(code, "200", "{path} with the key as a Basic password");
    }
    cluster.kill_engine();
}

/// `status --watch` asks every second: not on a terminal, each report follows the last (with
/// `--json`, one object per line), and a node killed meanwhile shows as down.
#[test]
fn status_watch_reports_every_second_and_sees_a_node_go_down() {
    use std::io::BufRead;
    let mut cluster = Cluster::start(
        4,
        ClusterOpts { engine_args: ["--ping-interval-secs", "1"].map(String::from).to_vec(), ..ClusterOpts::default() },
    );
    let mut watch = cluster.spawn_client(["status", "--watch", "--json"]);
    let stdout = watch.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || -> Value {
        let line = rx.recv_timeout(Duration::from_secs(5)).expect("a report every second");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object per line: {line:?}: {e}"))
    };
    let first = next();
    assert_eq!(first["nodes"].as_array().map(Vec::len), Some(4));
    let started = std::time::Instant::now();
    let second = next();
    assert!(started.elapsed() >= Duration::from_millis(500), "about a second apart");
    assert_eq!(second["nodes"].as_array().map(Vec::len), Some(4));
    cluster.kill_node(1);
    let addr = cluster.node_addr(1).to_string();
    dfs_tests::wait_until("the killed node to show as down", Duration::from_secs(15), || {
        let report = next();
        let down: Vec<&Value> =
            report["nodes"].as_array().expect("nodes").iter().filter(|n| n["up"] == false).collect();
        down.len() == 1 && down[0]["addr"] == addr.as_str()
    });
    let _ = watch.kill();
    let _ = watch.wait();
}
