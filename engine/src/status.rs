//! What the engine shows of itself over HTTP (`--http ADDR`): a status page at `/`, its live
//! part alone at `/live` (which the page's script fetches every two seconds), and the same data
//! as JSON at `/api/status`. The page is complete without JavaScript (the numbers); the script
//! only refreshes it in place and draws the charts. Everything is built into the binary.
//!
//! The request paths feed the engine state's [`Activity`] (a ring of per-second counters, the
//! last five minutes) and its `errors` (the last errors answered to clients); the rest is read
//! when asked: the node table, the repair queue, the metadata's totals, the passes running.
//!
//! On a loopback listener, or with no access keys, the pages are open; otherwise they need an
//! access key (`Authorization: Bearer KEY`). They never show key material.

use crate::state::EngineState;
use dfs_proto::units::human_bytes;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::activity::SecondView;

/// Seconds the charts show.
const CHART_SECS: u64 = 120;
/// How long the metadata's totals are reused (PostgreSQL counts them over every row).
const TOTALS_TTL: Duration = Duration::from_secs(5);

#[derive(Serialize)]
pub struct ErrorView {
    pub unix_ms: u64,
    pub message: String,
}

#[derive(Serialize, Clone, Copy)]
pub struct Totals {
    pub n_files: u64,
    pub bytes: u64,
}

/// Everything the page shows; `/api/status`. `replicas`, `nodes` and `repair_queue` are
/// what `dfs-client status --json` prints.
#[derive(Serialize)]
pub struct Status {
    pub version: &'static str,
    pub metadata: String,
    pub started_unix_ms: u64,
    pub now_unix_ms: u64,
    pub replicas: u32,
    pub nodes: Vec<dfs_proto::NodeStatus>,
    pub repair_queue: dfs_proto::msg::RepairQueueStatus,
    pub repair_running: bool,
    /// The engines working on this metadata (this one alone with the embedded database), and
    /// the cluster-wide passes (repair, gc, scrub) running and on which engine.
    pub engines: Vec<crate::meta::EngineView>,
    pub passes: Vec<crate::meta::PassView>,
    /// Why the engines and passes could not be listed, if they could not.
    pub engines_error: Option<String>,
    /// None when the metadata cannot say (the error is in `files_error`).
    pub files: Option<Totals>,
    pub files_error: Option<String>,
    pub uploads_in_progress: i64,
    pub downloads_in_progress: i64,
    /// The last [`CHART_SECS`] seconds, oldest first.
    pub seconds: Vec<SecondView>,
    /// The last errors answered to clients, oldest first.
    pub errors: Vec<ErrorView>,
    /// S3 requests since start by operation, and the S3 listener's answers by HTTP status
    /// (both empty when no S3 request has come).
    pub s3_ops: Vec<crate::metrics::S3OpCount>,
    pub s3_statuses: Vec<(String, u64)>,
}

/// The HTTP side: answers `/`, `/live` and `/api/status` (and leaves `/metrics` to the
/// runtime). Built once; runs on the HTTP thread.
pub struct Pages {
    state: Arc<EngineState>,
    /// Whether the pages need no access key.
    open: bool,
    /// The engine's client address.
    addr: String,
    started_unix_ms: u64,
    rt: tokio::runtime::Runtime,
    totals: Option<(Instant, Result<Totals, Arc<crate::meta::MetaError>>)>,
}

impl Pages {
    /// Err: the page's runtime could not start.
    pub fn new(state: Arc<EngineState>, open: bool, addr: String) -> Result<Pages, std::io::Error> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        Ok(Pages { state, open, addr, started_unix_ms: dfs_runtime::unix_ms(), rt, totals: None })
    }

    /// Answers a request, or None to pass it on.
    pub fn answer(&mut self, method: &str, url: &str, auth: Option<&str>) -> Option<dfs_runtime::metrics::Page> {
        let path = url.split('?').next().unwrap_or(url);
        if !matches!(path, "/" | "/live" | "/api/status") {
            return None;
        }
        if method != "GET" && method != "HEAD" {
            return Some((405, "text/plain; charset=utf-8", b"only GET\n".to_vec()));
        }
        if !self.open && !self.key_ok(auth) {
            let body = b"an access key is needed: Authorization: Bearer KEY\n".to_vec();
            return Some((401, "text/plain; charset=utf-8", body));
        }
        let status = self.snapshot();
        Some(match path {
            "/api/status" => match serde_json::to_vec_pretty(&status) {
                Ok(body) => (200, "application/json", body),
                Err(e) => (500, "text/plain; charset=utf-8", format!("cannot encode the status: {e}\n").into_bytes()),
            },
            "/live" => (200, "text/html; charset=utf-8", render_live(&status).into_bytes()),
            _ => (200, "text/html; charset=utf-8", render_page(&status).into_bytes()),
        })
    }

    /// An access key as `Bearer KEY` (scripts), or as the password of HTTP Basic
    /// authentication (browsers ask for it; any user name).
    fn key_ok(&self, auth: Option<&str>) -> bool {
        let Some(keys) = &self.state.access_keys else { return true };
        let Some(auth) = auth else { return false };
        if let Some(key) = auth.strip_prefix("Bearer ") {
            return keys.accepts(key.trim().as_bytes());
        }
        let Some(encoded) = auth.strip_prefix("Basic ") else { return false };
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else { return false };
        keys.accepts(&decoded[colon + 1..])
    }

    fn snapshot(&mut self) -> Status {
        let state = self.state.clone();
        let fresh = self.totals.as_ref().is_some_and(|(at, _)| at.elapsed() < TOTALS_TTL);
        if !fresh {
            let totals = self
                .rt
                .block_on(state.meta.totals())
                .map(|(n_files, bytes)| Totals { n_files, bytes })
                .map_err(Arc::new);
            self.totals = Some((Instant::now(), totals));
        }
        let (files, files_error) = match self.totals.as_ref().map(|(_, t)| t.clone()) {
            Some(Ok(totals)) => (Some(totals), None),
            Some(Err(e)) => (None, Some(e.to_string())),
            None => (None, None),
        };
        let n_queued = self.rt.block_on(state.meta.queue_len()).unwrap_or(0) + state.repair_queue.n_notes();
        let (engines, passes, engines_error) =
            match self.rt.block_on(state.meta.cluster_view(&state.passes, &self.addr, self.started_unix_ms)) {
                Ok(v) => (v.engines, v.passes, None),
                Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
            };
        let (s3_ops, s3_statuses) = crate::metrics::s3_counts();
        let errors: Vec<ErrorView> =
            state.errors.recent().into_iter().map(|(unix_ms, message)| ErrorView { unix_ms, message }).collect();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            metadata: state.meta.describe(),
            started_unix_ms: self.started_unix_ms,
            now_unix_ms: dfs_runtime::unix_ms(),
            replicas: state.config.replicas as u32,
            nodes: state.links.health.view(),
            repair_queue: dfs_proto::msg::RepairQueueStatus {
                n_queued,
                n_settled: state.repair_queue.settled(),
                n_copies_made: state.repair_queue.n_copies_made.load(Ordering::Relaxed),
            },
            repair_running: state.repair_running.load(Ordering::Acquire),
            engines,
            passes,
            engines_error,
            files,
            files_error,
            uploads_in_progress: state.activity.uploads.load(Ordering::Relaxed),
            downloads_in_progress: state.activity.downloads.load(Ordering::Relaxed),
            seconds: state.activity.last(CHART_SECS),
            errors,
            s3_ops,
            s3_statuses,
        }
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

/// The part of the page that changes: everything but the charts.
pub fn render_live(s: &Status) -> String {
    let mut h = String::new();
    let up = s.nodes.iter().filter(|n| n.up).count();
    let last_minute: Vec<&SecondView> = s.seconds.iter().rev().take(60).collect();
    let ops: u64 = last_minute.iter().map(|x| x.requests).sum();
    let bytes: u64 = last_minute.iter().map(|x| x.bytes_in + x.bytes_out).sum();
    let files = match (&s.files, &s.files_error) {
        (Some(t), _) => format!(
            "<span id=\"n-files\">{}</span> files, <span id=\"bytes-stored\">{}</span>",
            t.n_files,
            human_bytes(t.bytes)
        ),
        (None, Some(e)) => format!("files: <span class=\"bad\">{}</span>", escape(e)),
        (None, None) => "files: unknown".into(),
    };
    let _ = write!(
        h,
        "<section class=\"summary\"><p>{files}; {} cop{} of each chunk; nodes up: <span id=\"nodes-up\">{up}</span> of {}</p>\
         <p>in progress: <span id=\"uploads\">{}</span> upload(s), <span id=\"downloads\">{}</span> download(s); \
         last minute: <span id=\"ops-minute\">{ops}</span> request(s), {} moved</p>\
         <p>repair queue: {} chunk(s) waiting; {} settled and {} cop(ies) made since start{}</p></section>",
        s.replicas,
        if s.replicas == 1 { "y" } else { "ies" },
        s.nodes.len(),
        s.uploads_in_progress,
        s.downloads_in_progress,
        human_bytes(bytes),
        s.repair_queue.n_queued,
        s.repair_queue.n_settled,
        s.repair_queue.n_copies_made,
        if s.repair_running { "; a full repair pass is running" } else { "" },
    );
    render_engines(&mut h, s);
    h.push_str(
        "<h2>Nodes</h2><table id=\"nodes\"><thead><tr><th>node</th><th>address</th><th>state</th>\
         <th>last seen</th><th>chunks</th><th>space</th><th>scrub</th></tr></thead><tbody>",
    );
    for n in &s.nodes {
        let id = n.id.map(|id| id.to_string()).unwrap_or_else(|| "-".into());
        let scrub = n.report.as_ref().map(|r| scrub_cell(s.now_unix_ms, r)).unwrap_or_else(|| "-".into());
        let (chunks, space) = match &n.report {
            Some(r) => {
                let total = r.bytes_used + r.bytes_free;
                let pct = if total == 0 { 0.0 } else { r.bytes_used as f64 * 100.0 / total as f64 };
                (
                    r.n_chunks.to_string(),
                    format!(
                        "<div class=\"bar\" title=\"{pct:.1}% used\"><div style=\"width:{pct:.1}%\"></div></div> {} used, {} free",
                        human_bytes(r.bytes_used),
                        human_bytes(r.bytes_free)
                    ),
                )
            }
            None => ("-".into(), "-".into()),
        };
        let state = if n.up { "up" } else { "down" };
        let why = match (n.up, &n.last_error) {
            (false, Some(e)) => format!(" title=\"{}\"", escape(e)),
            _ => String::new(),
        };
        let _ = write!(
            h,
            "<tr class=\"node {state}\"><td class=\"id\">{}</td><td class=\"addr\">{}</td><td class=\"state\"{why}>{state}</td>\
             <td>{}</td><td class=\"chunks\">{chunks}</td><td>{space}</td><td class=\"scrub\">{scrub}</td></tr>",
            escape(&id),
            escape(&n.addr),
            ago(s.now_unix_ms, n.last_seen_unix_ms),
        );
    }
    h.push_str("</tbody></table>");
    render_s3(&mut h, s);
    h.push_str("<h2>Last errors</h2>");
    if s.errors.is_empty() {
        h.push_str("<p id=\"errors\">none since start</p>");
    } else {
        h.push_str("<ul id=\"errors\">");
        for e in s.errors.iter().rev() {
            let _ = write!(h, "<li>{}: {}</li>", ago(s.now_unix_ms, e.unix_ms), escape(&e.message));
        }
        h.push_str("</ul>");
    }
    h
}

/// S3 requests since start, one row per operation, when any has come.
fn render_s3(h: &mut String, s: &Status) {
    if s.s3_ops.is_empty() && s.s3_statuses.is_empty() {
        return;
    }
    h.push_str(
        "<h2>S3 requests since start</h2><table id=\"s3\"><thead><tr><th>operation</th><th>answered</th>\
         <th>by answer</th><th>mean time</th></tr></thead><tbody>",
    );
    for op in &s.s3_ops {
        let codes: Vec<String> = op
            .by_code
            .iter()
            .map(|(code, n)| {
                let class = if code.starts_with('2') { "" } else { " class=\"bad\"" };
                format!("<span{class}>{}: {n}</span>", escape(code))
            })
            .collect();
        let _ = write!(
            h,
            "<tr class=\"s3-op\"><td class=\"op\">{}</td><td class=\"answered\">{}</td><td>{}</td><td>{:.1} ms</td></tr>",
            escape(&op.op),
            op.answered,
            codes.join(", "),
            op.mean_ms
        );
    }
    h.push_str("</tbody></table>");
    let statuses: Vec<String> = s.s3_statuses.iter().map(|(st, n)| format!("{}: {n}", escape(st))).collect();
    let _ = write!(h, "<p id=\"s3-statuses\">HTTP answers by status: {}</p>", statuses.join(", "));
}

/// Where a node's scrub stands: the running pass's progress, else the last pass's outcome; and
/// the copies it has set aside.
fn scrub_cell(now_ms: u64, r: &dfs_proto::StoreReport) -> String {
    let sc = &r.scrub;
    let mut cell = if sc.running {
        let pct = if r.n_chunks == 0 { 100.0 } else { (sc.n_checked as f64 * 100.0 / r.n_chunks as f64).min(100.0) };
        format!(
            "<div class=\"bar\" title=\"{pct:.0}% checked\"><div style=\"width:{pct:.1}%\"></div></div> \
             checking: {} of {}",
            sc.n_checked, r.n_chunks
        )
    } else if sc.last_finished_unix_ms > 0 {
        format!(
            "last {}: {} checked, {} corrupt",
            ago(now_ms, sc.last_finished_unix_ms),
            sc.last_checked,
            sc.last_corrupt
        )
    } else {
        "none since the node started".into()
    };
    if r.n_quarantined > 0 {
        let _ = write!(cell, "; <span class=\"bad\">{} set aside</span>", r.n_quarantined);
    }
    cell
}

/// The engines sharing the metadata, and the cluster-wide passes running.
fn render_engines(h: &mut String, s: &Status) {
    h.push_str("<h2>Engines and passes</h2>");
    if let Some(e) = &s.engines_error {
        let _ = write!(h, "<p id=\"engines\" class=\"bad\">cannot list the engines: {}</p>", escape(e));
        return;
    }
    h.push_str(
        "<table id=\"engines\"><thead><tr><th>engine</th><th>started</th><th>registration</th></tr></thead><tbody>",
    );
    for e in &s.engines {
        let lease = match e.lease_left_ms {
            Some(ms) => format!("lasts {:.0} s unless renewed", ms.max(0) as f64 / 1000.0),
            None => "this engine alone (embedded metadata)".into(),
        };
        let _ = write!(
            h,
            "<tr class=\"engine{}\"><td class=\"addr\">{}{}</td><td>{}</td><td>{lease}</td></tr>",
            if e.this { " this" } else { "" },
            escape(&e.addr),
            if e.this { " (this one)" } else { "" },
            ago(s.now_unix_ms, e.started_unix_ms),
        );
    }
    h.push_str("</tbody></table>");
    if s.passes.is_empty() {
        h.push_str("<p id=\"passes\">cluster passes (repair, gc, scrub): none held</p>");
        return;
    }
    h.push_str("<ul id=\"passes\">");
    for p in &s.passes {
        let holder = if p.holder.is_empty() { "an engine that has not said its address" } else { &p.holder };
        let mut line = format!(
            "<li class=\"pass\"><b>{}</b> on {}{}",
            escape(&p.pass),
            escape(holder),
            if p.this { " (this one)" } else { "" }
        );
        if let Some(since) = p.since_unix_ms {
            let _ = write!(line, ", taken {}", ago(s.now_unix_ms, since));
        }
        if let Some(ms) = p.lease_left_ms {
            let _ = write!(line, ", lease lasts {:.0} s unless renewed", ms.max(0) as f64 / 1000.0);
        }
        line.push_str("</li>");
        h.push_str(&line);
    }
    h.push_str("</ul>");
}

const STYLE: &str = include_str!("status_page.css");
const SCRIPT: &str = include_str!("status_page.js");

/// The whole page: the live part as it is now, the charts' places, and the script.
pub fn render_page(s: &Status) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>dfs engine</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head><body>\
         <h1>dfs engine</h1><p class=\"meta\">version {} &middot; {}</p>\
         <div id=\"live\">{}</div>\
         <h2>Last {CHART_SECS} seconds</h2><div id=\"charts\"><p class=\"nojs\">(charts need JavaScript)</p></div>\
         <script>{SCRIPT}</script></body></html>",
        s.version,
        escape(&s.metadata),
        render_live(s),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_is_escaped() {
        assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn the_page_shows_scrub_progress_engines_and_passes() {
        let now = 1_700_000_100_000;
        let node = |addr: &str, scrub: dfs_proto::ScrubReport, n_quarantined| dfs_proto::NodeStatus {
            id: None,
            addr: addr.into(),
            up: true,
            last_seen_unix_ms: now,
            report: Some(dfs_proto::StoreReport { n_chunks: 200, n_quarantined, scrub, ..Default::default() }),
            last_error: None,
        };
        let running = dfs_proto::ScrubReport { running: true, n_checked: 50, ..Default::default() };
        let finished = dfs_proto::ScrubReport {
            last_finished_unix_ms: now - 120_000,
            last_checked: 200,
            last_corrupt: 1,
            ..Default::default()
        };
        let engine = |addr: &str, this| crate::meta::EngineView {
            addr: addr.into(),
            this,
            started_unix_ms: now - 30_000,
            lease_left_ms: Some(12_400),
        };
        let status = Status {
            version: "0",
            metadata: "PostgreSQL".into(),
            started_unix_ms: now - 30_000,
            now_unix_ms: now,
            replicas: 2,
            nodes: vec![
                node("n1", running, 0),
                node("n2", finished, 1),
                node("n3", dfs_proto::ScrubReport::default(), 0),
            ],
            repair_queue: Default::default(),
            repair_running: false,
            engines: vec![engine("10.0.0.1:7000", true), engine("10.0.0.2:7000", false)],
            passes: vec![
                crate::meta::PassView {
                    pass: "gc".into(),
                    holder: "10.0.0.2:7000".into(),
                    this: false,
                    since_unix_ms: None,
                    lease_left_ms: Some(9_000),
                },
                crate::meta::PassView {
                    pass: "repair".into(),
                    holder: "10.0.0.1:7000".into(),
                    this: true,
                    since_unix_ms: Some(now - 5_000),
                    lease_left_ms: Some(15_000),
                },
            ],
            engines_error: None,
            files: None,
            files_error: None,
            uploads_in_progress: 0,
            downloads_in_progress: 0,
            seconds: Vec::new(),
            errors: Vec::new(),
            s3_ops: vec![crate::metrics::S3OpCount {
                op: "PutObject".into(),
                answered: 12,
                by_code: vec![("200".into(), 11), ("BadDigest".into(), 1)],
                mean_ms: 4.25,
            }],
            s3_statuses: vec![("200".into(), 11), ("400".into(), 1), ("403".into(), 2)],
        };
        let h = render_live(&status);
        for want in [
            "checking: 50 of 200",
            "width:25.0%",
            "last 2 min ago: 200 checked, 1 corrupt; <span class=\"bad\">1 set aside</span>",
            "none since the node started",
            "10.0.0.1:7000 (this one)",
            "lasts 12 s unless renewed",
            "<b>gc</b> on 10.0.0.2:7000, lease lasts 9 s unless renewed",
            "<b>repair</b> on 10.0.0.1:7000 (this one), taken 5 s ago, lease lasts 15 s unless renewed",
            "<td class=\"op\">PutObject</td><td class=\"answered\">12</td><td><span>200: 11</span>, \
             <span class=\"bad\">BadDigest: 1</span></td><td>4.2 ms</td>",
            "HTTP answers by status: 200: 11, 400: 1, 403: 2",
        ] {
            assert!(h.contains(want), "missing {want:?} in {h}");
        }
        let none = render_live(&Status { passes: Vec::new(), s3_ops: Vec::new(), s3_statuses: Vec::new(), ..status });
        assert!(none.contains("cluster passes (repair, gc, scrub): none held"), "{none}");
        assert!(!none.contains("S3 requests"), "an S3 table without S3 requests: {none}");
    }
}
