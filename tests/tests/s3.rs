//! The S3 front door (`dfs-engine --s3`) driven by real S3 clients: aws-cli for buckets,
//! uploads, downloads, listings and ranges; boto3 for checksums, Content-MD5 and presigned URLs;
//! curl for an unsigned request. Every object is a dfs file the native client reads too.
//! (`scripts/deps.sh` installs aws-cli and boto3 from PyPI when missing.)

use dfs_tests::{assert_bytes_eq, pseudo_random_bytes, Cluster, ClusterOpts};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KEY_ID: &str = "DFSTESTKEY0000000001";
const SECRET: &str = "s3cr3t-of-the-test-cluster-0123456789";

/// A cluster whose engine serves S3, and how to reach it.
struct S3 {
    cluster: Cluster,
    endpoint: String,
    /// The CA that signed the engine's certificate, when S3 is served over HTTPS.
    ca: Option<PathBuf>,
    /// Holds the key file for as long as the cluster runs.
    _keys: tempfile::TempDir,
}

impl S3 {
    fn start() -> S3 {
        S3::start_with(ClusterOpts::default())
    }

    /// A cluster with `opts`, whose engines serve S3 with the test's key pair.
    fn start_with(mut opts: ClusterOpts) -> S3 {
        let dir = tempfile::Builder::new().prefix("dfs-s3-keys-").tempdir().expect("temp dir");
        let keys = dir.path().join("s3.keys");
        std::fs::write(&keys, format!("# the test's key pair\n{KEY_ID} {SECRET}\n")).expect("write keys");
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).expect("chmod keys");
        opts.engine_args.extend(["--s3".into(), "127.0.0.1:0".into(), "--s3-keys".into(), keys.display().to_string()]);
        let cluster = Cluster::start(4, opts);
        let addr = dfs_tests::http::logged_addr(&cluster.engine_stderr_log(), "S3 API");
        S3 { cluster, endpoint: format!("http://{addr}"), ca: None, _keys: dir }
    }

    /// A cluster whose engine serves S3 over HTTPS, with a certificate for 127.0.0.1 signed by
    /// a CA of the test's (`ca`), its files under `certs` (where a test may renew them).
    fn start_https(certs: &Path) -> S3 {
        let ca = dfs_tests::certs::Ca::new(certs, "s3-ca");
        let (cert, key) = ca.sign("s3-engine", &["IP:127.0.0.1", "DNS:localhost"]);
        let mut opts = ClusterOpts::default();
        opts.engine_args.extend([
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ]);
        let mut s3 = S3::start_with(opts);
        let log = std::fs::read_to_string(s3.cluster.engine_stderr_log()).unwrap_or_default();
        assert!(log.contains("S3 API on https://"), "the engine must say it serves HTTPS: {log}");
        s3.endpoint = s3.endpoint.replacen("http://", "https://", 1);
        s3.ca = Some(ca.cert.clone());
        s3
    }

    fn env(&self, cmd: &mut Command, secret: &str) {
        cmd.env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("S3_ENDPOINT", &self.endpoint)
            .current_dir(self.cluster.root().join("scratch"));
        match &self.ca {
            Some(ca) => cmd.env("AWS_CA_BUNDLE", ca),
            None => cmd,
        };
    }

    /// Runs aws-cli with the test's key pair (or another secret).
    fn aws_with(&self, secret: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("aws");
        cmd.arg("--endpoint-url").arg(&self.endpoint).args(args);
        self.env(&mut cmd, secret);
        let out = cmd.output().expect("cannot run aws (scripts/deps.sh installs it)");
        self.cluster.note(&format!(
            "$ aws {} -> {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        out
    }

    fn aws(&self, args: &[&str]) -> String {
        let out = self.aws_with(SECRET, args);
        assert!(out.status.success(), "aws {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a Python script with boto3 against the endpoint; its stdout.
    fn python(&self, script: &str) -> String {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script);
        self.env(&mut cmd, SECRET);
        let out = cmd.output().expect("cannot run python3");
        self.cluster.note(&format!(
            "$ python3 (boto3) -> {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        assert!(out.status.success(), "the boto3 script failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs rclone with a remote `dfs:` on the endpoint; its stdout. Multipart above 8 MiB, in
    /// 5 MiB parts, unless `defaults` (rclone's own: 200 MiB and 5 MiB).
    fn rclone_with(&self, defaults: bool, args: &[&str]) -> String {
        let mut cmd = Command::new("rclone");
        cmd.args(args)
            .env("RCLONE_CONFIG", "/dev/null")
            // rclone refuses a custom CA bundle over plain HTTP; some machines set one.
            .env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_CONFIG_DFS_TYPE", "s3")
            .env("RCLONE_CONFIG_DFS_PROVIDER", "Other")
            .env("RCLONE_CONFIG_DFS_ENDPOINT", &self.endpoint)
            .env("RCLONE_CONFIG_DFS_ACCESS_KEY_ID", KEY_ID)
            .env("RCLONE_CONFIG_DFS_SECRET_ACCESS_KEY", SECRET)
            .env("RCLONE_CONFIG_DFS_REGION", "us-east-1")
            .env("RCLONE_CONFIG_DFS_FORCE_PATH_STYLE", "true")
            .current_dir(self.cluster.root().join("scratch"));
        if !defaults {
            cmd.env("RCLONE_CONFIG_DFS_UPLOAD_CUTOFF", "8Mi").env("RCLONE_CONFIG_DFS_CHUNK_SIZE", "5Mi");
        }
        if let Some(ca) = &self.ca {
            cmd.arg("--ca-cert").arg(ca);
        }
        let out = cmd.output().expect("cannot run rclone (scripts/deps.sh installs it)");
        self.cluster.note(&format!(
            "$ rclone {} -> {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        assert!(out.status.success(), "rclone {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn rclone(&self, args: &[&str]) -> String {
        self.rclone_with(false, args)
    }

    /// Runs s3cmd (its own defaults) against the endpoint; its stdout.
    fn s3cmd(&self, args: &[&str]) -> String {
        let cfg = self.scratch("s3cmd.cfg");
        let host = self.endpoint.trim_start_matches("http://");
        write(
            &cfg,
            format!(
                "[default]\naccess_key = {KEY_ID}\nsecret_key = {SECRET}\nhost_base = {host}\nhost_bucket = {host}\n\
                 use_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n"
            )
            .as_bytes(),
        );
        let out = Command::new("s3cmd")
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .current_dir(self.cluster.root().join("scratch"))
            .output()
            .expect("cannot run s3cmd (scripts/deps.sh installs it)");
        self.cluster.note(&format!(
            "$ s3cmd {} -> {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
        assert!(out.status.success(), "s3cmd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.cluster.root().join("scratch").join(name)
    }
}

fn write(path: &Path, data: &[u8]) {
    std::fs::write(path, data).expect("write a test file");
}

#[test]
fn aws_cli_makes_buckets_puts_lists_reads_ranges_and_removes() {
    let s3 = S3::start_with(ClusterOpts {
        engine_args: vec!["--http".into(), "127.0.0.1:0".into()],
        ..ClusterOpts::default()
    });
    s3.aws(&["s3", "mb", "s3://data-set"]);
    assert!(s3.aws(&["s3", "ls"]).contains("data-set"), "the new bucket is listed");
    let refused = s3.aws_with(SECRET, &["s3", "mb", "s3://ab"]);
    assert!(!refused.status.success(), "a two-letter bucket name was accepted");

    // 0 B, 1 B and 5 MiB (one PUT each with aws-cli's defaults), byte-identical both ways.
    let sizes = [0usize, 1, 5 << 20];
    for (i, &size) in sizes.iter().enumerate() {
        let data = pseudo_random_bytes(40 + i as u64, size);
        let name = format!("up-{size}");
        write(&s3.scratch(&name), &data);
        s3.aws(&["s3", "cp", &name, &format!("s3://data-set/sizes/{name}")]);
        s3.aws(&["s3", "cp", &format!("s3://data-set/sizes/{name}"), &format!("{name}.back")]);
        let back = std::fs::read(s3.scratch(&format!("{name}.back"))).expect("the download");
        assert_bytes_eq(&back, &data, &format!("{size} bytes through S3"));
    }

    // The object is a dfs file: the native client finds it by its name and reads the same bytes.
    let five = pseudo_random_bytes(42, 5 << 20);
    let entry = s3.cluster.ls().into_iter().find(|e| e.name == "data-set/sizes/up-5242880").expect("listed natively");
    assert_eq!(entry.size, 5 << 20);
    assert_bytes_eq(&s3.cluster.get(&entry.id).expect("dfs-client get"), &five, "the object read natively");

    // Listing: a delimiter rolls keys up into common prefixes; pages follow each other.
    for k in ["a/1", "a/2", "b/1", "top"] {
        write(&s3.scratch("k"), k.as_bytes());
        s3.aws(&["s3", "cp", "k", &format!("s3://data-set/tree/{k}")]);
    }
    let root = s3.aws(&["s3", "ls", "s3://data-set/tree/"]);
    assert!(root.contains("PRE a/") && root.contains("PRE b/") && root.contains(" top"), "{root}");
    let page = s3.aws(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "data-set",
        "--prefix",
        "tree/",
        "--max-keys",
        "3",
        "--no-paginate",
        "--query",
        "[KeyCount, IsTruncated, NextContinuationToken, Contents[].Key]",
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&page).expect("json");
    assert_eq!(v[0], 3, "{page}");
    assert_eq!(v[1], true, "{page}");
    assert_eq!(v[3], serde_json::json!(["tree/a/1", "tree/a/2", "tree/b/1"]), "{page}");
    let token = v[2].as_str().expect("a continuation token").to_string();
    let next = s3.aws(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "data-set",
        "--prefix",
        "tree/",
        "--continuation-token",
        &token,
        "--query",
        "[IsTruncated, Contents[].Key]",
        "--output",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&next).expect("json");
    assert_eq!(v, serde_json::json!([false, ["tree/top"]]), "{next}");
    let all = s3.aws(&["s3", "ls", "--recursive", "s3://data-set/"]);
    assert_eq!(all.lines().count(), 7, "{all}");

    // A range read gets exactly its bytes.
    s3.aws(&[
        "s3api",
        "get-object",
        "--bucket",
        "data-set",
        "--key",
        "sizes/up-5242880",
        "--range",
        "bytes=1048570-1048585",
        "part",
    ]);
    let part = std::fs::read(s3.scratch("part")).expect("the range");
    assert_bytes_eq(&part, &five[1048570..=1048585], "a range across a block boundary");

    // A wrong secret is refused; a bucket with keys is not deleted; rm -r empties it.
    let wrong = s3.aws_with("not-the-secret-at-all-0000", &["s3", "ls", "s3://data-set/"]);
    assert!(!wrong.status.success(), "a wrong secret was served");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("SignatureDoesNotMatch"), "{wrong:?}");
    let busy = s3.aws_with(SECRET, &["s3", "rb", "s3://data-set"]);
    assert!(String::from_utf8_lossy(&busy.stderr).contains("BucketNotEmpty"), "{busy:?}");
    s3.aws(&["s3", "rm", "--recursive", "s3://data-set/"]);
    assert_eq!(s3.aws(&["s3", "ls", "--recursive", "s3://data-set/"]).trim(), "");
    s3.aws(&["s3", "rb", "s3://data-set"]);
    assert!(!s3.aws(&["s3", "ls"]).contains("data-set"));
    // Every object's file went with its key.
    assert!(s3.cluster.ls().is_empty(), "files left after their keys were removed: {:?}", s3.cluster.ls());

    // The requests show in the metrics, by operation and answer, and on the status page.
    let http = dfs_tests::http::logged_addr(&s3.cluster.engine_stderr_log(), "status page");
    let metrics = dfs_tests::http::get(&http, "/metrics", &[]).body;
    let count = |needle: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count(r#"dfs_engine_s3_requests_total{code="200",op="PutObject"}"#), 7, "{metrics}");
    assert_eq!(count(r#"dfs_engine_s3_requests_total{code="BucketNotEmpty",op="DeleteBucket"}"#), 1, "{metrics}");
    assert!(count(r#"dfs_engine_s3_responses_total{status="403"}"#) >= 1, "the wrong secret's 403: {metrics}");
    assert_eq!(count("dfs_engine_s3_bytes_in_total"), 1 + (5 << 20) + 3 + 3 + 3 + 3, "{metrics}");
    let status = dfs_tests::http::get(&http, "/api/status", &[]).body;
    let v: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let seconds = v["seconds"].as_array().cloned().unwrap_or_default();
    let requests: u64 = seconds.iter().filter_map(|s| s["requests"].as_u64()).sum();
    assert!(requests >= 20, "the status page counted {requests} requests in its last seconds: {status}");
    // By operation and answer, as the metrics count them.
    let ops = v["s3_ops"].as_array().cloned().unwrap_or_default();
    let op = |name: &str| ops.iter().find(|o| o["op"] == name).cloned().unwrap_or_default();
    assert_eq!(op("PutObject")["answered"], 7, "{status}");
    assert_eq!(op("DeleteBucket")["by_code"], serde_json::json!([["200", 1], ["BucketNotEmpty", 1]]), "{status}");
    let live = dfs_tests::http::get(&http, "/live", &[]).body;
    assert!(
        live.contains("<td class=\"op\">PutObject</td><td class=\"answered\">7</td>")
            && live.contains("<span class=\"bad\">BucketNotEmpty: 1</span>"),
        "the status page's S3 table: {live}"
    );
    assert!(live.contains("HTTP answers by status: 200: "), "{live}");
}

#[test]
fn boto3_digests_are_checked_before_an_object_is_visible_and_overwrites_replace_the_file() {
    let s3 = S3::start();
    let out = s3.python(
        r#"
import base64, hashlib, os, subprocess, time, zlib, urllib.error, urllib.request, boto3, botocore
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="digests")
body = os.urandom(300000)

def code(f):
    try:
        f()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    return "OK"

# What boto3 sends by default (a CRC32 checksum), and an explicit CRC32C.
print("default", code(lambda: s3.put_object(Bucket="digests", Key="ok", Body=body)))
print("crc32c", code(lambda: s3.put_object(Bucket="digests", Key="c", Body=body, ChecksumAlgorithm="CRC32C")))
good_md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
print("md5", code(lambda: s3.put_object(Bucket="digests", Key="m", Body=body, ContentMD5=good_md5)))
bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
print("bad-md5", code(lambda: s3.put_object(Bucket="digests", Key="bad1", Body=body, ContentMD5=bad_md5)))
bad_crc = base64.b64encode((zlib.crc32(body) ^ 1).to_bytes(4, "big")).decode()
print("bad-crc32", code(lambda: s3.put_object(Bucket="digests", Key="bad2", Body=body, ChecksumCRC32=bad_crc)))
keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="digests").get("Contents", []))
print("keys", ",".join(keys))
# Names go out percent-encoded when botocore asks (EncodingType=url): a '+' stays a '+'.
s3.put_object(Bucket="digests", Key="odd/a+b c&d", Body=b"o")
print("odd", [o["Key"] for o in s3.list_objects_v2(Bucket="digests", Prefix="odd/")["Contents"]],
      [o["Key"] for o in s3.list_objects(Bucket="digests", Prefix="odd/")["Contents"]])
s3.delete_object(Bucket="digests", Key="odd/a+b c&d")
got = s3.get_object(Bucket="digests", Key="ok")
print("etag", got["ETag"].strip('"') == hashlib.md5(body).hexdigest())
print("same", got["Body"].read() == body)
# Metadata comes back.
s3.put_object(Bucket="digests", Key="meta", Body=b"x", ContentType="text/csv", Metadata={"Origin": "lab-7"})
h = s3.head_object(Bucket="digests", Key="meta")
print("meta", h["ContentType"], h["Metadata"].get("origin"))
# An overwrite replaces the object whole.
s3.put_object(Bucket="digests", Key="ok", Body=b"second")
print("overwritten", s3.get_object(Bucket="digests", Key="ok")["Body"].read() == b"second")
# A presigned GET, fetched with curl and with Python's own HTTP, no S3 library.
url = s3.generate_presigned_url("get_object", Params={"Bucket": "digests", "Key": "m"}, ExpiresIn=300)
fetched = subprocess.run(["curl", "-sf", url], capture_output=True)
print("presigned", fetched.returncode == 0 and fetched.stdout == body, urllib.request.urlopen(url).read() == body)
late = s3.generate_presigned_url("get_object", Params={"Bucket": "digests", "Key": "m"}, ExpiresIn=1)
time.sleep(2.5)
try:
    urllib.request.urlopen(late)
    print("expired", "served")
except urllib.error.HTTPError as e:
    print("expired", e.code)
print("missing", code(lambda: s3.get_object(Bucket="digests", Key="nope")))
print("nobucket", code(lambda: s3.get_object(Bucket="nope-bucket", Key="x")))
etag_m = s3.head_object(Bucket="digests", Key="m")["ETag"]
print("if-none-match", code(lambda: s3.get_object(Bucket="digests", Key="m", IfNoneMatch=etag_m)))
print("if-match", code(lambda: s3.get_object(Bucket="digests", Key="m", IfMatch='"abc"')))
print("if-match-same", code(lambda: s3.get_object(Bucket="digests", Key="m", IfMatch=etag_m)))
# Conditional writes: the key must not exist (If-None-Match: *) or must hold this ETag (If-Match).
print("conditional-put", code(lambda: s3.put_object(Bucket="digests", Key="m", Body=b"x", IfNoneMatch="*")))
print("unchanged", s3.get_object(Bucket="digests", Key="m")["Body"].read() == body)
print("stale-if-match", code(lambda: s3.put_object(Bucket="digests", Key="m", Body=b"x", IfMatch='"0123456789abcdef0123456789abcdef"')))
print("if-match-put", code(lambda: s3.put_object(Bucket="digests", Key="cond", Body=b"x", IfMatch=etag_m)))
print("fresh-if-none-match", code(lambda: s3.put_object(Bucket="digests", Key="cond", Body=b"one", IfNoneMatch="*")))
etag_one = s3.head_object(Bucket="digests", Key="cond")["ETag"]
print("if-match-put-same", code(lambda: s3.put_object(Bucket="digests", Key="cond", Body=b"two", IfMatch=etag_one)))
print("cond-body", s3.get_object(Bucket="digests", Key="cond")["Body"].read())
# Sixteen writers race for one new key with If-None-Match: *: exactly one wins, and the key
# holds the winner's bytes.
import concurrent.futures
def racer(i):
    try:
        s3.put_object(Bucket="digests", Key="race", Body=b"writer %d" % i, IfNoneMatch="*")
        return i
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    outcomes = list(pool.map(racer, range(16)))
winners = [o for o in outcomes if isinstance(o, int)]
print("race", len(winners), sorted(set(o for o in outcomes if not isinstance(o, int))),
      s3.get_object(Bucket="digests", Key="race")["Body"].read() == b"writer %d" % winners[0])
cp = s3.copy_object(Bucket="digests", Key="m-copy", CopySource={"Bucket": "digests", "Key": "m"})
print("copy", cp["CopyObjectResult"]["ETag"] == etag_m, s3.get_object(Bucket="digests", Key="m-copy")["Body"].read() == body)
s3.copy_object(Bucket="digests", Key="meta", CopySource={"Bucket": "digests", "Key": "meta"},
    MetadataDirective="REPLACE", ContentType="text/plain", Metadata={"origin": "lab-8"})
h = s3.head_object(Bucket="digests", Key="meta")
print("replaced", h["ContentType"], h["Metadata"].get("origin"))
print("onto-itself", code(lambda: s3.copy_object(Bucket="digests", Key="m", CopySource={"Bucket": "digests", "Key": "m"})))
print("copy-missing", code(lambda: s3.copy_object(Bucket="digests", Key="x", CopySource={"Bucket": "digests", "Key": "nope"})))
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    let expect = [
        "default OK",
        "crc32c OK",
        "md5 OK",
        "bad-md5 BadDigest",
        "bad-crc32 BadDigest",
        "keys c,m,ok",
        "odd ['odd/a+b c&d'] ['odd/a+b c&d']",
        "etag True",
        "same True",
        "meta text/csv lab-7",
        "overwritten True",
        "presigned True True",
        "expired 403",
        "missing NoSuchKey",
        "nobucket NoSuchBucket",
        "if-none-match 304",
        "if-match PreconditionFailed",
        "if-match-same OK",
        "conditional-put PreconditionFailed",
        "unchanged True",
        "stale-if-match PreconditionFailed",
        "if-match-put PreconditionFailed",
        "fresh-if-none-match OK",
        "if-match-put-same OK",
        "cond-body b'two'",
        "race 1 ['PreconditionFailed'] True",
        "copy True True",
        "replaced text/plain lab-8",
        "onto-itself InvalidRequest",
        "copy-missing NoSuchKey",
    ];
    assert_eq!(lines, expect, "what boto3 saw");
    // The refused uploads (bad digests, failed conditions, the race's fifteen losers) stored
    // nothing, and the overwritten and re-copied objects' first files are gone: the bucket's
    // seven keys are seven files.
    let names: Vec<String> = {
        let mut n: Vec<String> = s3.cluster.ls().into_iter().map(|e| e.name).collect();
        n.sort();
        n
    };
    assert_eq!(
        names,
        ["digests/c", "digests/cond", "digests/m", "digests/m-copy", "digests/meta", "digests/ok", "digests/race"],
        "dfs files behind the keys"
    );

    // An unsigned request is refused with S3's error.
    let curl =
        Command::new("curl").args(["-s", "-w", "\n%{http_code}", &format!("{}/digests/m", s3.endpoint)]).output();
    let curl = curl.expect("cannot run curl");
    let text = String::from_utf8_lossy(&curl.stdout);
    assert!(text.ends_with("403") && text.contains("AccessDenied"), "an unsigned GET: {text}");
}

/// Two engines over one PostgreSQL serve the same buckets: what one's S3 stores, the other's
/// lists and reads, and a delete through either is seen by both.
#[test]
fn two_engines_over_postgresql_serve_the_same_buckets() {
    let pg = dfs_tests::pg::Postgres::start();
    let mut s3 =
        S3::start_with(ClusterOpts { postgres: Some((pg.url(), pg.password_file())), ..ClusterOpts::default() });
    let first = s3.endpoint.clone();
    s3.cluster.start_another_engine();
    let second = format!("http://{}", dfs_tests::http::logged_addr(&s3.cluster.engine_stderr_log(), "S3 API"));
    assert_ne!(first, second);
    let data = pseudo_random_bytes(77, 1 << 20);
    write(&s3.scratch("obj"), &data);
    s3.aws(&["s3", "mb", "s3://shared"]);
    s3.aws(&["s3", "cp", "obj", "s3://shared/one/obj"]);
    s3.endpoint = second.clone();
    assert!(s3.aws(&["s3", "ls"]).contains("shared"), "the second engine does not list the bucket");
    s3.aws(&["s3", "cp", "s3://shared/one/obj", "obj.back"]);
    assert_bytes_eq(&std::fs::read(s3.scratch("obj.back")).expect("download"), &data, "read through the other engine");
    // Writers on both engines race for one new key with If-None-Match: *; PostgreSQL lets
    // exactly one win.
    let mut race = Command::new("python3");
    race.arg("-c")
        .arg(
            r#"
import os, boto3, botocore, concurrent.futures
from botocore.config import Config
cfg = Config(s3={"addressing_style": "path"}, max_pool_connections=16)
engines = [boto3.client("s3", endpoint_url=e, config=cfg) for e in (os.environ["S3_ENDPOINT"], os.environ["S3_SECOND"])]
def racer(i):
    try:
        engines[i % 2].put_object(Bucket="shared", Key="race", Body=b"writer %d" % i, IfNoneMatch="*")
        return i
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    outcomes = list(pool.map(racer, range(16)))
winners = [o for o in outcomes if isinstance(o, int)]
print(len(winners), sorted(set(o for o in outcomes if not isinstance(o, int))),
      engines[1].get_object(Bucket="shared", Key="race")["Body"].read() == b"writer %d" % winners[0])
"#,
        )
        .env("S3_SECOND", &s3.endpoint);
    s3.endpoint = first.clone();
    s3.env(&mut race, SECRET);
    let out = race.output().expect("cannot run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    s3.cluster.note(&format!(
        "$ python3 (race over two engines) -> {}\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    ));
    assert_eq!(text.trim(), "1 ['PreconditionFailed'] True", "{}", String::from_utf8_lossy(&out.stderr));
    s3.aws(&["s3", "rm", "s3://shared/race"]);
    s3.endpoint = second.clone();
    s3.aws(&["s3", "rm", "s3://shared/one/obj"]);
    s3.endpoint = first;
    assert_eq!(
        s3.aws(&["s3", "ls", "--recursive", "s3://shared/"]).trim(),
        "",
        "the delete is seen by the first engine"
    );
    s3.aws(&["s3", "rb", "s3://shared"]);
}

/// Multipart uploads: aws-cli's own (above its 8 MiB threshold, parts uploaded concurrently,
/// downloaded again with ranged GETs under If-Match), and boto3 driving each step: parts listed,
/// uploads listed, S3's refusals (a part under 5 MiB that is not the last, a wrong ETag, parts
/// out of order), completion, and an abort whose parts' files go.
#[test]
fn multipart_uploads_from_aws_cli_and_boto3() {
    let s3 = S3::start();
    s3.aws(&["s3", "mb", "s3://parts"]);
    let data = pseudo_random_bytes(90, (20 << 20) + 12345);
    write(&s3.scratch("big"), &data);
    s3.aws(&["s3", "cp", "big", "s3://parts/big", "--only-show-errors"]);
    s3.aws(&["s3", "cp", "s3://parts/big", "big.back", "--only-show-errors"]);
    assert_bytes_eq(&std::fs::read(s3.scratch("big.back")).expect("download"), &data, "a multipart upload read back");
    let head =
        s3.aws(&["s3api", "head-object", "--bucket", "parts", "--key", "big", "--query", "[ContentLength, ETag]"]);
    let v: serde_json::Value = serde_json::from_str(&head).expect("json");
    assert_eq!(v[0], data.len() as u64, "{head}");
    assert!(v[1].as_str().is_some_and(|e| e.ends_with("-3\"")), "the ETag of 3 parts: {head}");

    let out = s3.python(
        r#"
import hashlib, os, boto3, botocore
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], config=Config(s3={"addressing_style": "path"}))
def code(f):
    try:
        f()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    return "OK"
a = os.urandom(5 * 1024 * 1024)
b = os.urandom(1000)
c = os.urandom(2000)
up = s3.create_multipart_upload(Bucket="parts", Key="obj", ContentType="application/x-test")["UploadId"]
e1 = s3.upload_part(Bucket="parts", Key="obj", UploadId=up, PartNumber=1, Body=a)["ETag"]
e2 = s3.upload_part(Bucket="parts", Key="obj", UploadId=up, PartNumber=2, Body=b)["ETag"]
e3 = s3.upload_part(Bucket="parts", Key="obj", UploadId=up, PartNumber=3, Body=c)["ETag"]
print("parts", [(p["PartNumber"], p["Size"]) for p in s3.list_parts(Bucket="parts", Key="obj", UploadId=up)["Parts"]])
print("uploads", [u["Key"] for u in s3.list_multipart_uploads(Bucket="parts").get("Uploads", [])])
def complete(parts):
    return lambda: s3.complete_multipart_upload(Bucket="parts", Key="obj", UploadId=up,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})
print("small", code(complete([(1, e1), (2, e2), (3, e3)])))
print("etag", code(complete([(1, e1), (3, '"0123456789abcdef0123456789abcdef"')])))
print("order", code(complete([(3, e3), (1, e1)])))
print("complete", code(complete([(1, e1), (3, e3)])))
got = s3.get_object(Bucket="parts", Key="obj")
print("body", got["Body"].read() == a + c, got["ContentType"])
md5s = hashlib.md5(hashlib.md5(a).digest() + hashlib.md5(c).digest()).hexdigest()
print("etag-2", got["ETag"] == '"%s-2"' % md5s)
print("again", code(complete([(1, e1), (3, e3)])))
ab = s3.create_multipart_upload(Bucket="parts", Key="dropped")["UploadId"]
s3.upload_part(Bucket="parts", Key="dropped", UploadId=ab, PartNumber=1, Body=b)
print("abort", code(lambda: s3.abort_multipart_upload(Bucket="parts", Key="dropped", UploadId=ab)))
print("aborted", code(lambda: s3.list_parts(Bucket="parts", Key="dropped", UploadId=ab)))
print("left", [u["Key"] for u in s3.list_multipart_uploads(Bucket="parts").get("Uploads", [])])
r = s3.get_object(Bucket="parts", Key="obj", Range="bytes=5242870-5242889")["Body"].read()
print("across", r == (a + c)[5242870:5242890])
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "parts [(1, 5242880), (2, 1000), (3, 2000)]",
            "uploads ['obj']",
            "small EntityTooSmall",
            "etag InvalidPart",
            "order InvalidPartOrder",
            "complete OK",
            "body True application/x-test",
            "etag-2 True",
            "again NoSuchUpload",
            "abort OK",
            "aborted NoSuchUpload",
            "left []",
            "across True",
        ],
        "what boto3 saw"
    );
    // Files: aws-cli's object (3 parts) and boto3's (the 2 parts it kept); part 2, left out,
    // and the aborted upload's part are gone.
    let mut names: Vec<String> = s3.cluster.ls().into_iter().map(|e| e.name).collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("parts/obj ")).count(), 2, "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with("parts/dropped")), "{names:?}");
    s3.aws(&["s3", "rm", "--recursive", "s3://parts/"]);
    assert!(s3.cluster.ls().is_empty(), "files left after the objects were removed");
}

/// `rclone sync` of a directory tree into a bucket (small files, an empty one, nested
/// directories, and one over rclone's multipart cutoff when it is lowered), `rclone check`
/// comparing sizes and MD5s, and a sync back out, byte-identical; then s3cmd's own put, ls, get
/// and del against the same bucket.
#[test]
fn rclone_syncs_and_checks_a_tree_and_s3cmd_reads_it() {
    let s3 = S3::start();
    let tree = s3.scratch("tree");
    let mut files = Vec::new();
    for i in 0..24u64 {
        let dir = tree.join(format!("d{}", i % 3)).join(format!("e{}", i % 2));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let size = match i {
            0 => 0,
            1 => 12 << 20,
            _ => (i * 7919 % 200_000) as usize,
        };
        let path = dir.join(format!("f{i}.bin"));
        write(&path, &pseudo_random_bytes(300 + i, size));
        files.push(path);
    }
    s3.rclone(&["mkdir", "dfs:trees"]);
    s3.rclone(&["sync", "tree", "dfs:trees/one"]);
    s3.rclone(&["check", "tree", "dfs:trees/one"]);
    let listed = s3.rclone(&["lsf", "-R", "--files-only", "dfs:trees/one"]);
    assert_eq!(listed.lines().count(), files.len(), "{listed}");
    s3.rclone(&["sync", "dfs:trees/one", "back"]);
    for path in &files {
        let rel = path.strip_prefix(&tree).expect("under the tree");
        let back = s3.scratch("back").join(rel);
        let got = std::fs::read(&back).unwrap_or_else(|e| panic!("{} did not come back: {e}", rel.display()));
        assert_bytes_eq(&got, &std::fs::read(path).expect("original"), &rel.display().to_string());
    }
    // aws-cli's sync of the same tree, and back; rclone's check compares its objects' MD5s with
    // the local files.
    s3.aws(&["s3", "sync", "tree", "s3://trees/aws/", "--only-show-errors"]);
    s3.rclone(&["check", "tree", "dfs:trees/aws"]);
    s3.aws(&["s3", "sync", "s3://trees/aws/", "back-aws", "--only-show-errors"]);
    for path in &files {
        let rel = path.strip_prefix(&tree).expect("under the tree");
        let got = std::fs::read(s3.scratch("back-aws").join(rel))
            .unwrap_or_else(|e| panic!("{} did not come back through aws s3 sync: {e}", rel.display()));
        assert_bytes_eq(&got, &std::fs::read(path).expect("original"), &rel.display().to_string());
    }
    // A changed file and a removed one: the next sync sends only those, and check agrees.
    write(&files[5], b"changed");
    std::fs::remove_file(&files[6]).expect("rm");
    s3.rclone(&["sync", "tree", "dfs:trees/one"]);
    s3.rclone(&["check", "tree", "dfs:trees/one"]);

    write(&s3.scratch("note.txt"), b"from s3cmd");
    s3.s3cmd(&["put", "note.txt", "s3://trees/notes/note.txt"]);
    let ls = s3.s3cmd(&["ls", "s3://trees/"]);
    assert!(ls.contains("DIR") && ls.contains("s3://trees/one/") && ls.contains("s3://trees/notes/"), "{ls}");
    s3.s3cmd(&["get", "s3://trees/one/d1/e1/f1.bin", "f1.s3cmd"]);
    assert_bytes_eq(
        &std::fs::read(s3.scratch("f1.s3cmd")).expect("s3cmd get"),
        &std::fs::read(&files[1]).expect("f1"),
        "s3cmd get",
    );
    s3.s3cmd(&["del", "s3://trees/notes/note.txt"]);
    assert!(!s3.s3cmd(&["ls", "s3://trees/"]).contains("notes/"));
}

/// `dfs-client bucket`: an operator's buckets are the ones S3 clients see and the other way
/// round; `bucket ls` names the dfs file behind each key (one per part for a multipart upload),
/// which `stat` and `get` read; a bucket with keys is not removed; listings page in key order.
#[test]
fn dfs_client_manages_the_buckets_that_s3_clients_see() {
    let s3 = S3::start();
    let c = &s3.cluster;
    c.client(["bucket", "create", "ops-made"]).expect_success("bucket create");
    let again = c.client(["bucket", "create", "ops-made"]).expect_error("a second create");
    assert!(again.contains("exists already"), "{again}");
    let bad = c.client(["bucket", "create", "Bad_Name"]).expect_error("a name S3 refuses");
    assert!(bad.contains("not a bucket name"), "{bad}");
    assert!(s3.aws(&["s3", "ls"]).contains("ops-made"), "aws-cli sees the operator's bucket");
    s3.aws(&["s3", "mb", "s3://cli-made"]);
    let listed = c.client(["bucket", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&listed.expect_success("bucket list").stdout).expect("json");
    let names: Vec<&str> = v.as_array().expect("an array").iter().filter_map(|b| b["name"].as_str()).collect();
    assert_eq!(names, ["cli-made", "ops-made"], "{v}");

    let small = pseudo_random_bytes(70, 100_000);
    let big = pseudo_random_bytes(71, (12 << 20) + 7);
    write(&s3.scratch("small"), &small);
    write(&s3.scratch("big"), &big);
    s3.aws(&["s3", "cp", "small", "s3://ops-made/dir/small", "--only-show-errors"]);
    // Above aws-cli's 8 MiB threshold: two parts, two dfs files.
    s3.aws(&["s3", "cp", "big", "s3://ops-made/big", "--only-show-errors"]);
    let keys: Vec<serde_json::Value> = c
        .client(["bucket", "ls", "ops-made", "--json"])
        .expect_success("bucket ls")
        .stdout_text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!((keys[0]["key"].as_str(), keys[0]["size"].as_u64()), (Some("big"), Some(big.len() as u64)));
    assert_eq!(keys[0]["n_files"], 2, "{keys:?}");
    assert!(keys[0]["etag"].as_str().is_some_and(|e| e.ends_with("-2")), "{keys:?}");
    assert_eq!((keys[1]["key"].as_str(), keys[1]["n_files"].as_u64()), (Some("dir/small"), Some(1)));
    let id = keys[1]["file_id"].as_str().expect("the small object's file");
    assert_bytes_eq(&c.get(id).expect("dfs-client get"), &small, "the object read by its file ID");
    assert_eq!(c.stat(id).expect("dfs-client stat").size, small.len() as u64);
    let first_part = keys[0]["file_id"].as_str().expect("the big object's first file");
    assert_bytes_eq(&c.get(first_part).expect("get"), &big[..8 << 20], "the first part's file");
    let text = c.client(["bucket", "ls", "ops-made", "--prefix", "dir/"]).expect_success("ls --prefix").stdout_text();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(id) && text.trim_end().ends_with("dir/small"), "{text}");
    let multi = c.client(["bucket", "ls", "ops-made", "--prefix", "b"]).expect_success("ls").stdout_text();
    assert!(multi.contains(&format!("{first_part}+1")), "the second part is counted: {multi}");

    let busy = c.client(["bucket", "rm", "ops-made"]).expect_error("removing a bucket with keys");
    assert!(busy.contains("not empty"), "{busy}");
    assert_eq!(s3.aws(&["s3", "ls", "--recursive", "s3://ops-made/"]).lines().count(), 2, "nothing was lost");
    let missing = c.client(["bucket", "ls", "no-such-bucket"]).expect_error("ls of a missing bucket");
    assert!(missing.contains("not found"), "{missing}");
    let missing = c.client(["bucket", "rm", "no-such-bucket"]).expect_error("rm of a missing bucket");
    assert!(missing.contains("not found"), "{missing}");

    // More keys than one page of the protocol (1000): every key once, in order.
    s3.python(
        r#"
import os, boto3
from concurrent.futures import ThreadPoolExecutor
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))
with ThreadPoolExecutor(16) as pool:
    list(pool.map(lambda i: s3.put_object(Bucket="cli-made", Key="k/%04d" % i, Body=b"%d" % i), range(1003)))
"#,
    );
    let all = c.client(["bucket", "ls", "cli-made"]).expect_success("ls of 1003 keys").stdout_text();
    let listed: Vec<String> = all.lines().filter_map(|l| l.rsplit(' ').next()).map(str::to_owned).collect();
    let expected: Vec<String> = (0..1003).map(|i| format!("k/{i:04}")).collect();
    assert_eq!(listed, expected, "bucket ls over two pages");

    s3.aws(&["s3", "rm", "--recursive", "s3://ops-made/", "--only-show-errors"]);
    c.client(["bucket", "rm", "ops-made"]).expect_success("rm of the emptied bucket");
    assert!(!s3.aws(&["s3", "ls"]).contains("ops-made"), "aws-cli no longer sees it");
}

/// `--s3-domain`: a request to BUCKET.DOMAIN names the bucket in its host (curl signing with
/// SigV4 itself, the name resolved to the engine with `--resolve`), and requests to the
/// engine's address stay path-style, in the same engine.
#[test]
fn virtual_hosted_style_under_the_configured_domain_beside_path_style() {
    let s3 = S3::start_with(ClusterOpts {
        engine_args: vec!["--s3-domain".into(), "s3.dfs.test".into()],
        ..ClusterOpts::default()
    });
    let port = s3.endpoint.rsplit(':').next().expect("a port").to_string();
    let curl = |bucket: &str, secret: &str, args: &[&str]| -> (String, String) {
        let host = format!("{bucket}.s3.dfs.test");
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--aws-sigv4", "aws:amz:us-east-1:s3"])
            .arg("--user")
            .arg(format!("{KEY_ID}:{secret}"))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "--resolve"])
            .arg(format!("{host}:{port}:127.0.0.1"))
            .args(args.iter().map(|a| a.replace("HOST", &format!("http://{host}:{port}"))))
            .current_dir(s3.cluster.root().join("scratch"))
            .output()
            .expect("cannot run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        s3.cluster.note(&format!("$ curl {args:?} ({bucket}) -> {text}"));
        let (body, code) = text.rsplit_once('\n').expect("curl printed the status");
        (code.to_string(), body.to_string())
    };
    s3.aws(&["s3", "mb", "s3://vh-bucket"]);
    let data = pseudo_random_bytes(80, 300_000);
    write(&s3.scratch("up"), &data);
    assert_eq!(curl("vh-bucket", SECRET, &["-T", "up", "HOST/dir/obj"]).0, "200", "a virtual-hosted PUT");
    s3.aws(&["s3", "cp", "s3://vh-bucket/dir/obj", "back", "--only-show-errors"]);
    assert_bytes_eq(&std::fs::read(s3.scratch("back")).expect("download"), &data, "read back path-style");
    let (code, body) = curl("vh-bucket", SECRET, &["HOST/?list-type=2&prefix=dir%2F"]);
    assert!(code == "200" && body.contains("<Key>dir/obj</Key>") && body.contains("<Name>vh-bucket</Name>"), "{body}");
    let (code, _) = curl("vh-bucket", SECRET, &["-o", "vh-back", "HOST/dir/obj"]);
    assert_eq!(code, "200");
    assert_bytes_eq(&std::fs::read(s3.scratch("vh-back")).expect("download"), &data, "read back virtual-hosted");
    let (code, body) = curl("no-such-bucket", SECRET, &["HOST/dir/obj"]);
    assert!(code == "404" && body.contains("NoSuchBucket"), "{code} {body}");
    let (code, body) = curl("vh-bucket", "not-the-secret-at-all-0000", &["HOST/dir/obj"]);
    assert!(code == "403" && body.contains("SignatureDoesNotMatch"), "{code} {body}");
    // The bucket in the host and a path: the path is the key, not a second bucket.
    let (code, _) = curl("vh-bucket", SECRET, &["HOST/vh-bucket/dir/obj"]);
    assert_eq!(code, "404", "a key named after the bucket does not exist");
}

/// A file of `size` bytes whose every MiB differs (its index is written into it), so that a
/// part stored twice or out of order cannot go unnoticed; written a MiB at a time.
fn write_large(path: &Path, size: u64) {
    use std::io::Write;
    let mut block = pseudo_random_bytes(size, 1 << 20);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create a large file"));
    let mut left = size;
    let mut i = 0u64;
    while left > 0 {
        block[..8].copy_from_slice(&i.to_le_bytes());
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).expect("write a large file");
        left -= n as u64;
        i += 1;
    }
    f.flush().expect("flush a large file");
}

/// Asserts two files hold the same bytes, a MiB at a time, naming the first MiB that differs.
fn assert_files_eq(got: &Path, want: &Path, what: &str) {
    use std::io::Read;
    let open = |p: &Path| std::fs::File::open(p).unwrap_or_else(|e| panic!("{what}: cannot open {}: {e}", p.display()));
    let (mut a, mut b) = (open(got), open(want));
    let (la, lb) = (a.metadata().expect("stat").len(), b.metadata().expect("stat").len());
    assert_eq!(la, lb, "{what}: {} bytes, expected {lb}", la);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    while at < la {
        let n = ((la - at) as usize).min(ba.len());
        a.read_exact(&mut ba[..n]).expect("read");
        b.read_exact(&mut bb[..n]).expect("read");
        assert!(ba[..n] == bb[..n], "{what}: the MiB at byte {at} differs");
        at += n as u64;
    }
}

/// 0 B, 1 B, 5 MiB, 100 MiB and 1 GiB up and down through each client with its own defaults
/// for multipart (aws-cli: 8 MiB parts from 8 MiB on, 10 at once; boto3's transfer manager:
/// the same; rclone: one PUT below 200 MiB, then 5 MiB parts; s3cmd: 15 MiB parts above 15
/// MiB), byte-identical, each object's ETag the form its client's part count gives. Each object
/// is deleted before the next client's, so the test holds one at a time.
#[test]
fn each_client_moves_0_b_to_1_gib_with_its_own_multipart() {
    let s3 = S3::start();
    s3.aws(&["s3", "mb", "s3://large"]);
    for (size, name) in [(0u64, "0b"), (1, "1b"), (5 << 20, "5m"), (100 << 20, "100m"), (1 << 30, "1g")] {
        write_large(&s3.scratch(name), size);
        let source = s3.scratch(name);
        for client in ["aws", "boto3", "rclone", "s3cmd"] {
            let key = format!("{client}/{name}");
            let back = format!("{name}.{client}");
            match client {
                "aws" => {
                    s3.aws(&["s3", "cp", name, &format!("s3://large/{key}"), "--only-show-errors"]);
                    s3.aws(&["s3", "cp", &format!("s3://large/{key}"), &back, "--only-show-errors"]);
                }
                "boto3" => {
                    s3.python(&format!(
                        r#"
import os, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], config=Config(s3={{"addressing_style": "path"}}))
s3.upload_file("{name}", "large", "{key}")
s3.download_file("large", "{key}", "{back}")
"#
                    ));
                }
                "rclone" => {
                    s3.rclone_with(true, &["copyto", name, &format!("dfs:large/{key}")]);
                    s3.rclone_with(true, &["copyto", &format!("dfs:large/{key}"), &back]);
                }
                _ => {
                    s3.s3cmd(&["put", name, &format!("s3://large/{key}")]);
                    s3.s3cmd(&["get", &format!("s3://large/{key}"), &back]);
                }
            }
            assert_files_eq(&s3.scratch(&back), &source, &format!("{name} through {client}"));
            std::fs::remove_file(s3.scratch(&back)).expect("rm");
            let head = s3.aws(&["s3api", "head-object", "--bucket", "large", "--key", &key, "--query", "ETag"]);
            let parts = match client {
                "rclone" => (size >= 200 << 20).then(|| size.div_ceil(5 << 20)),
                "s3cmd" => (size > 15 << 20).then(|| size.div_ceil(15 << 20)),
                _ => (size >= 8 << 20).then(|| size.div_ceil(8 << 20)),
            };
            match parts {
                Some(n) => assert!(head.trim().ends_with(&format!("-{n}\\\"\"")), "{client} {name}: ETag {head}"),
                None => assert!(!head.contains('-'), "{client} {name}: one PUT's ETag {head}"),
            }
            s3.aws(&["s3", "rm", &format!("s3://large/{key}"), "--only-show-errors"]);
        }
        std::fs::remove_file(&source).expect("rm");
    }
    assert!(s3.cluster.ls().is_empty(), "files left after every object was removed: {:?}", s3.cluster.ls());
}

/// A GET through S3 never returns a wrong byte: a small object (read whole, its chunks in
/// parallel) and a large one (streamed block by block) with one copy of a chunk corrupt on disk
/// read back byte-identical from the other copy, whole and by range; with every copy of a chunk
/// corrupt, the client gets an error, not the damaged bytes: for the small object an S3 error
/// naming the chunk, before any byte.
#[test]
fn s3_reads_from_the_sound_copy_and_never_returns_a_damaged_byte() {
    let s3 = S3::start();
    let c = &s3.cluster;
    s3.aws(&["s3", "mb", "s3://sound"]);
    let small = pseudo_random_bytes(91, 200_000);
    let large = pseudo_random_bytes(92, 6 << 20);
    write(&s3.scratch("small"), &small);
    write(&s3.scratch("large"), &large);
    s3.aws(&["s3", "cp", "small", "s3://sound/small", "--only-show-errors"]);
    s3.aws(&["s3", "cp", "large", "s3://sound/large", "--only-show-errors"]);
    let file_of = |key: &str| -> String {
        let out =
            c.client(["bucket", "ls", "sound", "--prefix", key, "--json"]).expect_success("bucket ls").stdout_text();
        let v: serde_json::Value = serde_json::from_str(out.lines().next().expect("the key")).expect("json");
        v["file_id"].as_str().expect("a file").to_string()
    };
    for (key, data) in [("small", &small), ("large", &large)] {
        let id = file_of(key);
        let chunk = dfs_tests::chunk_id(&id, 1);
        let holders = c.find_copies(&id, 1);
        assert_eq!(holders.len(), 2, "two copies of {key}'s chunk 1");
        c.corrupt_copy(holders[0], chunk, dfs_tests::Damage::Data(10));
        s3.aws(&["s3", "cp", &format!("s3://sound/{key}"), "back", "--only-show-errors"]);
        assert_bytes_eq(&std::fs::read(s3.scratch("back")).expect("download"), data, &format!("{key}, one copy bad"));
        let offset = c.stat(&id).expect("stat").chunks[1].offset;
        let range = format!("bytes={}-{}", offset, offset + 99);
        s3.aws(&["s3api", "get-object", "--bucket", "sound", "--key", key, "--range", &range, "part"]);
        let part = std::fs::read(s3.scratch("part")).expect("the range");
        assert_bytes_eq(&part, &data[offset as usize..offset as usize + 100], &format!("{key}, a range, one copy bad"));
        c.corrupt_copy(holders[1], chunk, dfs_tests::Damage::Data(10));
        std::fs::remove_file(s3.scratch("back")).expect("rm");
        let failed = s3.aws_with(SECRET, &["s3", "cp", &format!("s3://sound/{key}"), "back", "--only-show-errors"]);
        assert!(!failed.status.success(), "{key}: a download with every copy of a chunk bad succeeded");
        if key == "small" {
            // Read whole before its answer starts: an S3 error that names the file and chunk.
            let out = s3.aws_with(SECRET, &["s3api", "get-object", "--bucket", "sound", "--key", key, "whole"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("InternalError"), "{err}");
            assert!(dfs_tests::mentions_chunk(&err, &id, 1), "the error names file {id} chunk 1: {err}");
        }
        if let Ok(got) = std::fs::read(s3.scratch("back")) {
            assert!(got != *data && got.len() < data.len(), "{key}: whatever was written stops short");
            assert_bytes_eq(&got, &data[..got.len()], &format!("{key}: the bytes before the bad chunk"));
        }
    }
}

/// Two engines over PostgreSQL; boto3 begins a multipart upload through one, and that engine is
/// killed (SIGKILL) while a part is on its way. The client's retry goes to the other engine,
/// which knows the upload (it is in the shared metadata): the part is sent again, the upload is
/// listed and completed there, and the object reads back whole, made of exactly its parts' files.
#[test]
fn an_engine_killed_mid_multipart_upload_the_retry_finishes_through_the_other() {
    use std::io::BufRead;
    let pg = dfs_tests::pg::Postgres::start();
    let mut s3 =
        S3::start_with(ClusterOpts { postgres: Some((pg.url(), pg.password_file())), ..ClusterOpts::default() });
    let first = s3.cluster.engine_addr().to_string();
    let second = s3.cluster.start_another_engine();
    let second_s3 = format!("http://{}", dfs_tests::http::logged_addr(&s3.cluster.engine_stderr_log(), "S3 API"));
    assert_ne!(s3.endpoint, second_s3);
    s3.aws(&["s3", "mb", "s3://multi"]);
    let script = r#"
import hashlib, os, sys, boto3
from botocore.config import Config
def client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1, "mode": "standard"}))
a, b = client(os.environ["S3_ENDPOINT"]), client(os.environ["S3_SECOND"])
parts = [os.urandom(5 << 20), os.urandom(5 << 20), os.urandom(48 << 20), os.urandom(1000)]
up = a.create_multipart_upload(Bucket="multi", Key="obj")["UploadId"]
done = []
for n in (1, 2):
    done.append({"PartNumber": n, "ETag": a.upload_part(Bucket="multi", Key="obj", UploadId=up, PartNumber=n, Body=parts[n - 1])["ETag"]})
print("sending 3", flush=True)
try:
    a.upload_part(Bucket="multi", Key="obj", UploadId=up, PartNumber=3, Body=parts[2])
    print("first engine answered part 3", flush=True)
except Exception as e:
    print("first engine failed:", type(e).__name__, flush=True)
# The retry: the same upload, through the other engine.
for n in (3, 4):
    done.append({"PartNumber": n, "ETag": b.upload_part(Bucket="multi", Key="obj", UploadId=up, PartNumber=n, Body=parts[n - 1])["ETag"]})
print("listed", [p["PartNumber"] for p in b.list_parts(Bucket="multi", Key="obj", UploadId=up)["Parts"]], flush=True)
b.complete_multipart_upload(Bucket="multi", Key="obj", UploadId=up, MultipartUpload={"Parts": done})
got = b.get_object(Bucket="multi", Key="obj")["Body"].read()
print("whole", hashlib.sha256(got).hexdigest() == hashlib.sha256(b"".join(parts)).hexdigest(), flush=True)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).env("S3_SECOND", &second_s3).stdout(std::process::Stdio::piped());
    s3.env(&mut cmd, SECRET);
    let mut child = cmd.spawn().expect("cannot run python3");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("read the script's output");
        seen.push(line.clone());
        if line == "sending 3" {
            s3.cluster.kill_engine_at(&first);
            break;
        }
    }
    seen.extend(lines.map(|l| l.expect("read the script's output")));
    let status = child.wait().expect("wait for python3");
    s3.cluster.note(&format!("$ python3 (boto3, two engines) -> {status}\n{}", seen.join("\n")));
    assert!(status.success(), "the script failed: {seen:?}");
    assert_eq!(seen.first().map(String::as_str), Some("sending 3"), "{seen:?}");
    assert!(seen[1].starts_with("first engine failed:"), "the killed engine answered: {seen:?}");
    assert_eq!(&seen[2..], ["listed [1, 2, 3, 4]", "whole True"], "{seen:?}");
    // The object is made of exactly its four parts' files; the part cut off by the kill left
    // no file behind.
    s3.cluster.use_server(Some(&second));
    let names: Vec<String> = s3.cluster.ls().into_iter().map(|e| e.name).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("multi/obj (upload ")), "{names:?}");
    s3.endpoint = second_s3;
    s3.aws(&["s3", "rm", "s3://multi/obj", "--only-show-errors"]);
    assert!(s3.cluster.ls().is_empty(), "the parts' files went with the object");
}

/// A key's commit that succeeds but answers an error (a lost answer, made by a failpoint): the
/// engine reads the key back, finds it pointing at the new object, and keeps the object's file,
/// so the key never lists without its data. (Before, the new file was deleted on any error, and
/// the key pointed at nothing readable.)
#[test]
fn a_key_whose_commit_answer_is_lost_keeps_its_data() {
    let s3 = S3::start_with(ClusterOpts {
        engine_env: vec![("DFS_FAILPOINTS".into(), "s3-key-answer-lost".into())],
        ..ClusterOpts::default()
    });
    s3.aws(&["s3", "mb", "s3://lost"]);
    let data = pseudo_random_bytes(95, 300_000);
    write(&s3.scratch("obj"), &data);
    s3.aws(&["s3", "cp", "obj", "s3://lost/obj", "--only-show-errors"]);
    s3.aws(&["s3", "cp", "s3://lost/obj", "back", "--only-show-errors"]);
    assert_bytes_eq(&std::fs::read(s3.scratch("back")).expect("download"), &data, "the object after a lost answer");
    let log = std::fs::read_to_string(s3.cluster.engine_stderr_log()).expect("engine log");
    assert!(log.contains("a key was set though its commit answered an error"), "the engine said nothing: {log}");
}

/// The subject of the certificate a TLS server at `addr` presents, checked against `ca`
/// (openssl s_client).
fn served_subject(addr: &str, ca: &Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Verification: OK"), "openssl s_client to {addr}: {text}");
    let line = text.lines().find(|l| l.starts_with("Peer certificate:"));
    line.unwrap_or_else(|| panic!("no peer certificate: {text}")).replace(' ', "")
}

/// S3 over HTTPS (`--tls-cert`, `--tls-key`): aws-cli, boto3 and rclone move objects with the
/// cluster's CA; a capture between client and engine holds none of an object's bytes (and does
/// over plain HTTP, so the check can fail); a client with another CA is refused by its own
/// check; plain HTTP to the HTTPS port gets one line saying so; a certificate renewed on disk
/// is served to the next connection, without a restart.
#[test]
fn s3_clients_work_over_https_and_a_renewed_certificate_is_served_next() {
    let certs = tempfile::tempdir().expect("a temp dir");
    let s3 = S3::start_https(certs.path());
    let addr = s3.endpoint.trim_start_matches("https://").to_string();
    s3.aws(&["s3", "mb", "s3://tls"]);
    let data = pseudo_random_bytes(21, 6 << 20);
    let input = s3.scratch("tls-input");
    write(&input, &data);
    // aws-cli through a recording forwarder: one PUT (its multipart threshold is 8 MiB), then
    // the GET back.
    let tap = dfs_tests::Tap::start(&addr);
    let through_tap = format!("https://{}", tap.addr);
    let run = |args: &[&str]| {
        let mut cmd = Command::new("aws");
        cmd.arg("--endpoint-url").arg(&through_tap).args(args);
        s3.env(&mut cmd, SECRET);
        let out = cmd.output().expect("run aws");
        assert!(out.status.success(), "aws {args:?} through the tap: {}", String::from_utf8_lossy(&out.stderr));
    };
    let output = s3.scratch("tls-output");
    run(&["s3", "cp", input.to_str().expect("utf-8"), "s3://tls/object-over-tls"]);
    run(&["s3", "cp", "s3://tls/object-over-tls", output.to_str().expect("utf-8")]);
    assert_bytes_eq(&std::fs::read(&output).expect("read the download"), &data, "an object through HTTPS");
    let captured: Vec<u8> = tap.captured().into_iter().flat_map(|(sent, got)| [sent, got].concat()).collect();
    assert!(captured.len() > 2 * data.len(), "the capture missed the transfer: {} bytes", captured.len());
    for clear in [&data[1_000_000..1_000_064], b"object-over-tls".as_slice(), KEY_ID.as_bytes()] {
        assert!(!dfs_tests::contains_bytes(&captured, clear), "{:?}... crossed in clear", &clear[..8]);
    }

    // boto3 and rclone with the same CA.
    let got = s3.python(
        "import boto3, os\n\
         s3 = boto3.client('s3', endpoint_url=os.environ['S3_ENDPOINT'])\n\
         s3.put_object(Bucket='tls', Key='from-boto3', Body=b'over https')\n\
         print(s3.get_object(Bucket='tls', Key='from-boto3')['Body'].read().decode())\n",
    );
    assert_eq!(got.trim(), "over https");
    let listed = s3.rclone(&["lsf", "dfs:tls"]);
    assert!(listed.contains("from-boto3") && listed.contains("object-over-tls"), "rclone over HTTPS: {listed}");

    // Another CA: aws-cli refuses the engine's certificate.
    let other = dfs_tests::certs::Ca::new(&certs.path().join("other"), "other-ca");
    let mut cmd = Command::new("aws");
    cmd.arg("--endpoint-url").arg(&s3.endpoint).args(["s3", "ls", "s3://tls"]);
    s3.env(&mut cmd, SECRET);
    let out = cmd.env("AWS_CA_BUNDLE", &other.cert).output().expect("run aws");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("CERTIFICATE_VERIFY_FAILED"), "another CA: {stderr}");

    // Plain HTTP to the HTTPS port: one clear answer.
    let plain = dfs_tests::http::get(&addr, "/tls", &[]);
    assert_eq!(plain.code, 400, "{}", plain.head);
    assert!(plain.body.contains("speaks HTTPS"), "{}", plain.body);

    // Renewed on disk: the next connection gets the new certificate, and requests go on.
    let ca = s3.ca.clone().expect("an HTTPS cluster");
    let before = served_subject(&addr, &ca);
    assert!(before.ends_with("CN=s3-engine"), "before the renewal: {before}");
    let issuer = dfs_tests::certs::Ca::new(&certs.path().join("renewal"), "s3-ca-renewal");
    let (new_cert, new_key) = issuer.sign("s3-engine-renewed", &["IP:127.0.0.1"]);
    // The renewal is signed by another CA, so that clients with the old CA tell them apart.
    std::fs::copy(&new_key, certs.path().join("s3-engine.key")).expect("renew the key");
    std::fs::copy(&new_cert, certs.path().join("s3-engine.pem")).expect("renew the certificate");
    let after = served_subject(&addr, &issuer.cert);
    assert!(after.ends_with("CN=s3-engine-renewed"), "after the renewal: {after}");
    let mut cmd = Command::new("aws");
    cmd.arg("--endpoint-url").arg(&s3.endpoint).args(["s3", "ls", "s3://tls"]);
    s3.env(&mut cmd, SECRET);
    let out = cmd.env("AWS_CA_BUNDLE", &issuer.cert).output().expect("run aws");
    assert!(out.status.success(), "aws after the renewal: {}", String::from_utf8_lossy(&out.stderr));

    // Over plain HTTP, the same capture shows the object's bytes: the check above can fail.
    let plain_s3 = S3::start();
    plain_s3.aws(&["s3", "mb", "s3://plain"]);
    let tap = dfs_tests::Tap::start(plain_s3.endpoint.trim_start_matches("http://"));
    let mut cmd = Command::new("aws");
    cmd.arg("--endpoint-url").arg(format!("http://{}", tap.addr));
    cmd.args(["s3", "cp", input.to_str().expect("utf-8"), "s3://plain/object-in-clear"]);
    plain_s3.env(&mut cmd, SECRET);
    let out = cmd.env_remove("AWS_CA_BUNDLE").output().expect("run aws");
    assert!(out.status.success(), "aws over plain HTTP: {}", String::from_utf8_lossy(&out.stderr));
    let captured: Vec<u8> = tap.captured().into_iter().flat_map(|(sent, got)| [sent, got].concat()).collect();
    assert!(dfs_tests::contains_bytes(&captured, &data[1_000_000..1_000_064]), "a plain capture holds the bytes");
}
